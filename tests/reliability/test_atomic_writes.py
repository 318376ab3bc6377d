"""Writes through the filesystem API replace a file whole or not at all: a client that drops
an upload half-way, or a server killed mid-upload, leaves the old contents byte-exact; the
replaced file keeps its owner and mode; nothing half-written is left beside it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
OLD = os.urandom(200_000) + b"the old contents\n"
DIR = "/tmp/atomic"


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http, timeout=3600)["id"]
        yield sid
        http.delete(f"/v1/sandbox/{sid}/")


def fs(http: httpx.Client, sid: str, op: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/sandbox/{sid}/filesystem/{op}", json=body)


def write(http: httpx.Client, sid: str, path: str, data: bytes, **params: str) -> None:
    r = http.post(
        f"/v1/sandbox/{sid}/filesystem/write-file",
        params={"path": path, **params},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text


def read(http: httpx.Client, sid: str, path: str) -> bytes:
    r = fs(http, sid, "read-file", path=path)
    assert r.status_code == 200, r.text
    return r.content


def names(http: httpx.Client, sid: str, path: str) -> list[str]:
    r = fs(http, sid, "ls", path=path)
    assert r.status_code == 200, r.text
    return sorted(i["name"] for i in r.json()["items"])


def half_upload(server: ServerProcess, sid: str, path: str, total: int) -> socket.socket:
    """Start a write-file of ``total`` bytes, send half of them, and return the open socket."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"POST /v1/sandbox/{sid}/filesystem/write-file?path={path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {server.api_key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    )
    sock.sendall(head.encode())
    sock.sendall(b"N" * (total // 2))
    return sock


def wait_for(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


@pytest.mark.usefixtures("no_leaks")
def test_upload_dropped_half_way_keeps_the_old_file(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    path = f"{DIR}/dropped.bin"
    write(http, sandbox, path, OLD)
    log_before = server.log_path.stat().st_size
    sock = half_upload(server, sandbox, path, 4 * 1024 * 1024)
    time.sleep(1.0)  # the server has written part of the new contents somewhere by now
    sock.close()
    time.sleep(1.0)
    assert read(http, sandbox, path) == OLD
    wait_for(lambda: names(http, sandbox, DIR) == ["dropped.bin"])  # no temporary file stays
    with open(server.log_path, "rb") as log:  # a client giving up is not a server error
        log.seek(log_before)
        logged = log.read().decode(errors="replace")
    assert "Traceback" not in logged and "unhandled error" not in logged, logged[-2000:]


@pytest.mark.usefixtures("no_leaks")
def test_replacing_keeps_owner_and_mode(http: httpx.Client, sandbox: str) -> None:
    path = f"{DIR}/owned.txt"
    write(http, sandbox, path, b"alpha beta\n")
    api.run(http, sandbox, f"chown 1000:1000 {path} && chmod 640 {path}")
    write(http, sandbox, path, b"gamma delta\n")
    assert api.run(http, sandbox, f"stat -c '%u %g %a' {path}")["stdout"] == "1000 1000 640\n"
    r = fs(http, sandbox, "edit-file", path=path, edits=[{"find": "gamma", "replace": "epsilon"}])
    assert r.status_code == 200, r.text
    assert read(http, sandbox, path) == b"epsilon delta\n"
    assert api.run(http, sandbox, f"stat -c '%u %g %a' {path}")["stdout"] == "1000 1000 640\n"
    # an explicit mode still wins
    write(http, sandbox, path, b"zeta\n", permissions="600")
    assert api.run(http, sandbox, f"stat -c '%u %g %a' {path}")["stdout"] == "1000 1000 600\n"
    # a symlink is written through (as before), not replaced by a file
    api.run(http, sandbox, f"ln -sf owned.txt {DIR}/link.txt")
    write(http, sandbox, f"{DIR}/link.txt", b"via link\n")
    assert read(http, sandbox, path) == b"via link\n"
    assert api.run(http, sandbox, f"readlink {DIR}/link.txt")["stdout"] == "owned.txt\n"
    # copy over an existing file replaces it whole
    write(http, sandbox, f"{DIR}/src.txt", b"copied\n")
    r = fs(http, sandbox, "copy", src_path=f"{DIR}/src.txt", dst_path=path, overwrite=True)
    assert r.status_code == 204, r.text
    assert read(http, sandbox, path) == b"copied\n"
    assert not [n for n in names(http, sandbox, DIR) if n.startswith(".")]


def test_kill9_mid_upload_keeps_the_old_file(spare: SpareServer) -> None:
    with (
        spare() as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http,
    ):
        sid = api.create(http, timeout=3600)["id"]
        path = f"{DIR}/killed.bin"
        write(http, sid, path, OLD)
        sock = half_upload(server, sid, path, 8 * 1024 * 1024)
        time.sleep(1.0)
        server.kill9()
        sock.close()
        server.start()
        assert read(http, sid, path) == OLD
        assert names(http, sid, DIR) == ["killed.bin"]
        api.delete(http, sid)
