"""Inputs a request can make the server hold, or hand to the kernel, are bounded (the table in
docs/limits.md): env vars, exec commands, JSON bodies and header sections past their limits get
400/413/431 naming the limit, before the server holds them, and its memory stays put. Values the
kernel cannot take (NUL bytes, numbers past a uid) are a 400, never a 500 or a silent cut."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http, timeout=3600)["id"]
        yield sid
        http.delete(f"/v1/sandbox/{sid}/")


def rss_mib(server: ServerProcess) -> float:
    assert server.proc is not None
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, f"{r.status_code} {r.text[:500]}"
    message = r.json()["message"]
    for word in words:
        assert word in message, message


def execute(http: httpx.Client, sid: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true", **body})


@pytest.mark.usefixtures("no_leaks")
def test_env_vars_on_create_are_bounded(http: httpx.Client) -> None:
    # each value within its own limit, together past what execve takes (E2BIG on every exec)
    many = {f"V{i}": "x" * 60_000 for i in range(40)}
    r = http.post("/v1/sandbox", json={"env_vars": many})
    refused(r, 400, "env_vars")
    assert any(e["field"] == "env_vars" for e in r.json()["errors"]), r.text
    r = http.post("/v1/sandbox", json={"env_vars": {f"V{i}": "" for i in range(5000)}})
    refused(r, 400, "env_vars")
    r = http.post("/v1/sandbox", json={"env_vars": {"A": "a\x00b"}})
    refused(r, 400, "env_vars")


@pytest.mark.usefixtures("no_leaks")
def test_exec_inputs_are_bounded(http: httpx.Client, sandbox: str) -> None:
    refused(execute(http, sandbox, envs={f"V{i}": "x" * 60_000 for i in range(40)}), 400, "envs")
    refused(execute(http, sandbox, command="echo " + "x" * 200_000), 400, "command")
    refused(execute(http, sandbox, command="echo a\x00b"), 400, "command")
    refused(execute(http, sandbox, cwd="/tmp\x00/x"), 400, "cwd")
    refused(execute(http, sandbox, envs={"A": "a\x00b"}), 400, "envs")
    # just inside the limits still runs
    r = execute(http, sandbox, command="echo ${#A}", envs={"A": "y" * 60_000})
    assert r.status_code == 200 and r.json()["stdout"] == "60000\n", r.text[:300]


@pytest.mark.usefixtures("no_leaks")
def test_oversized_bodies_get_413_before_they_are_held(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    before = rss_mib(server)
    envs = {f"V{i}": "x" * 60_000 for i in range(700)}  # 42 MB of JSON
    body = json.dumps({"command": "true", "envs": envs}).encode()
    url = f"/v1/sandbox/{sandbox}/process/execute"
    r = http.post(url, content=body, headers={"content-type": "application/json"})
    refused(r, 413, "body", "bytes")
    # without a length up front (chunked): cut off at the limit, not read to the end first
    chunks = (body[i : i + MIB] for i in range(0, len(body), MIB))
    r = http.post(url, content=chunks, headers={"content-type": "application/json"})
    refused(r, 413, "body", "bytes")
    # and without a key
    r = httpx.post(
        f"{server.base_url}/v1/sandbox", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code in (401, 413), r.text
    assert rss_mib(server) - before < 50, (before, rss_mib(server))
    assert execute(http, sandbox).status_code == 200  # the connection pool and server are fine


def test_huge_header_sections_get_431(server: ServerProcess) -> None:
    before = rss_mib(server)
    for filler in (b"X-Big: " + b"a" * (32 * MIB) + b"\r\n", b"X-Many: a\r\n" * 2_000_000):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(10)
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            try:
                for i in range(0, len(filler), 256 * 1024):
                    sock.sendall(filler[i : i + 256 * 1024])
            except OSError:
                pass  # the server stopped reading: fine, its answer is what counts
            answer = b""
            deadline = time.monotonic() + 10
            while b"\r\n" not in answer and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    break
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert rss_mib(server) - before < 50, (before, rss_mib(server))
    assert httpx.get(f"{server.base_url}/v1/health", timeout=10).status_code == 200


@pytest.mark.usefixtures("no_leaks")
def test_set_permissions_owner_past_a_uid(http: httpx.Client, sandbox: str) -> None:
    api.run(http, sandbox, "touch /tmp/owned")
    for owner in ("1099511627776", "4294967295", "²"):
        r = http.post(
            f"/v1/sandbox/{sandbox}/filesystem/set-permissions", json={"path": "/tmp/owned", "owner": owner}
        )
        refused(r, 400, "owner")
        r = http.post(
            f"/v1/sandbox/{sandbox}/filesystem/set-permissions", json={"path": "/tmp/owned", "group": owner}
        )
        refused(r, 400, "group")


def test_template_name_with_nul_or_lone_surrogate(http: httpx.Client) -> None:
    for raw in ('{"template_name": "a\\u0000b"}', '{"template_name": "\\ud800"}'):
        r = http.post("/v1/sandbox", content=raw, headers={"content-type": "application/json"})
        refused(r, 400, "template_name")
    r = http.post("/v1/sandbox/sbx00/process/execute", content='{"command": "echo \\udc80"}',
                  headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code in (400, 404), r.text
