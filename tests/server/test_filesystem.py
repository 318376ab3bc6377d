"""The filesystem API (wire-protocol §8) against real sandboxes: byte-exact round trips through
every endpoint, the status codes, and escape attempts that must never reach the host."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll import _multipart as multipart
from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

BINARY = bytes(range(256)) * 64 + os.urandom(300_000) + b"\r\n--boundary\r\n\x00"
UNICODE = "/tmp/ünïcødé dir/файл ✓ 名字.bin"


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http, timeout=3600)["id"]
        yield sid
        http.delete(f"/v1/sandbox/{sid}/")


def fs(http: httpx.Client, sandbox: str, op: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/sandbox/{sandbox}/filesystem/{op}", json=body)


def write(http: httpx.Client, sandbox: str, path: str, data: bytes, **params: str) -> httpx.Response:
    return http.post(
        f"/v1/sandbox/{sandbox}/filesystem/write-file",
        params={"path": path, **params},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def read(http: httpx.Client, sandbox: str, path: str, **options: int) -> bytes:
    r = fs(http, sandbox, "read-file", path=path, **options)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    return r.content


def sh(http: httpx.Client, sandbox: str, command: str) -> str:
    result = api.run(http, sandbox, command)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


# round trips -----------------------------------------------------------------------------------
def test_write_and_read_file_byte_exact(http: httpx.Client, sandbox: str) -> None:
    for path, data in (("/tmp/rt/binary.bin", BINARY), ("/tmp/rt/empty", b""), (UNICODE, b"unicode\n")):
        assert write(http, sandbox, path, data).status_code == 204
        assert read(http, sandbox, path) == data
    # the sandbox itself sees the same bytes (the API works on its real root filesystem)
    digest = sh(http, sandbox, "sha256sum /tmp/rt/binary.bin").split()[0]
    assert digest == hashlib.sha256(BINARY).hexdigest()
    assert sh(http, sandbox, f"cat '{UNICODE}'") == "unicode\n"
    # overwrite truncates; permissions apply to new and existing files
    assert write(http, sandbox, "/tmp/rt/binary.bin", b"short", permissions="600").status_code == 204
    assert read(http, sandbox, "/tmp/rt/binary.bin") == b"short"
    assert sh(http, sandbox, "stat -c %a /tmp/rt/binary.bin") == "600\n"


def test_read_file_ranges(http: httpx.Client, sandbox: str) -> None:
    write(http, sandbox, "/tmp/lines.txt", b"one\ntwo\nthree\nfour\n")
    write(http, sandbox, "/tmp/nolf.txt", b"a\nb\nc")
    assert read(http, sandbox, "/tmp/lines.txt", head=2) == b"one\ntwo\n"
    assert read(http, sandbox, "/tmp/lines.txt", tail=2) == b"three\nfour\n"
    assert read(http, sandbox, "/tmp/nolf.txt", tail=2) == b"b\nc"
    assert read(http, sandbox, "/tmp/lines.txt", tail=0) == b""
    assert read(http, sandbox, "/tmp/lines.txt", head=99) == b"one\ntwo\nthree\nfour\n"
    assert read(http, sandbox, "/tmp/lines.txt", offset=4, limit=3) == b"two"
    assert read(http, sandbox, "/tmp/lines.txt", offset=100) == b""
    assert read(http, sandbox, "/tmp/lines.txt", offset=4, head=1) == b"two\n"
    both = fs(http, sandbox, "read-file", path="/tmp/lines.txt", head=1, tail=1)
    assert both.status_code == 400


def test_write_files_and_read_files_multipart(http: httpx.Client, sandbox: str) -> None:
    files = {"/tmp/mp/a.txt": b"A", "/tmp/mp/" + "ü ✓.bin": BINARY[:70_000], "/tmp/mp/empty": b""}
    # exactly what the leap0 SDK sends: field name = path, filename "upload", octet-stream parts
    r = http.post(f"/v1/sandbox/{sandbox}/filesystem/write-files", files=[(p, d) for p, d in files.items()])
    assert r.status_code == 204, r.text
    for path, data in files.items():
        assert read(http, sandbox, path) == data
    r = fs(http, sandbox, "read-files", paths=list(files))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert multipart.parse(r.headers["content-type"], r.content) == files
    # every part carries the headers the leap0 SDK insists on
    parts = r.content.split(b"\r\n--" + multipart.boundary_of(r.headers["content-type"]).encode())
    assert b'Content-Disposition: form-data; name="/tmp/mp/a.txt"' in parts[0]
    assert all(b"Content-Type: application/octet-stream\r\n" in p for p in parts[:-1])
    # a missing path fails the whole call before anything is sent
    assert fs(http, sandbox, "read-files", paths=["/tmp/mp/a.txt", "/nope"]).status_code == 404
    # not multipart
    bad = http.post(f"/v1/sandbox/{sandbox}/filesystem/write-files", content=b"x")
    assert bad.status_code == 400


def test_metadata_endpoints(http: httpx.Client, sandbox: str) -> None:
    sh(http, sandbox, "mkdir -p /tmp/meta/sub/deep && echo x > /tmp/meta/f.py && echo y > /tmp/meta/sub/g.py")
    sh(
        http,
        sandbox,
        "echo z > /tmp/meta/sub/deep/h.txt && ln -s sub /tmp/meta/link && chown nobody /tmp/meta/f.py",
    )
    info = fs(http, sandbox, "stat", path="/tmp/meta/f.py").json()
    assert info["name"] == "f.py" and info["path"] == "/tmp/meta/f.py" and info["size"] == 2
    assert info["is_dir"] is False and info["is_symlink"] is False and info["mode"] == "644"
    assert info["owner"] == "nobody" and info["group"] == "root" and isinstance(info["mtime"], int)
    link = fs(http, sandbox, "stat", path="/tmp/meta/link").json()
    assert link["is_symlink"] is True and link["link_target"] == "sub" and link["is_dir"] is True
    listing = fs(http, sandbox, "ls", path="/tmp/meta", recursive=False).json()["items"]
    assert [i["name"] for i in listing] == ["f.py", "link", "sub"]
    deep = fs(http, sandbox, "ls", path="/tmp/meta", recursive=True, exclude=["deep"]).json()["items"]
    assert [i["path"] for i in deep] == [
        "/tmp/meta/f.py",
        "/tmp/meta/link",
        "/tmp/meta/sub",
        "/tmp/meta/sub/g.py",
    ]
    assert fs(http, sandbox, "exists", path="/tmp/meta/sub").json() == {"exists": True}
    assert fs(http, sandbox, "exists", path="/tmp/meta/none").json() == {"exists": False}
    tree = fs(http, sandbox, "tree", path="/tmp/meta", max_depth=2).json()["items"]
    assert tree == [
        {"name": "f.py", "type": "file"},
        {"name": "link", "type": "file"},
        {"name": "sub", "type": "directory", "children": [
            {"name": "deep", "type": "directory"}, {"name": "g.py", "type": "file"},
        ]},
    ]  # fmt: skip
    glob = fs(http, sandbox, "glob", path="/tmp/meta", pattern="**/*.py").json()["items"]
    assert glob == ["/tmp/meta/f.py", "/tmp/meta/sub/g.py"]
    assert fs(http, sandbox, "glob", path="/tmp/meta", pattern="*.py").json()["items"] == ["/tmp/meta/f.py"]
    grep = fs(http, sandbox, "grep", path="/tmp/meta", pattern="^[xz]$", include="*.py").json()["items"]
    assert grep == [{"path": "/tmp/meta/f.py", "line": 1, "content": "x"}]


def test_edit_file_and_edit_files(http: httpx.Client, sandbox: str) -> None:
    write(http, sandbox, "/tmp/edit/a.txt", b"alpha beta\nbeta gamma\n")
    write(http, sandbox, "/tmp/edit/b.txt", b"no match here\n")
    r = fs(http, sandbox, "edit-file", path="/tmp/edit/a.txt", edits=[{"find": "beta", "replace": "B"}])
    assert r.status_code == 200
    assert r.json()["replacements"] == 2
    diff = r.json()["diff"]
    assert diff.startswith("--- a/tmp/edit/a.txt\n+++ b/tmp/edit/a.txt\n")
    assert "-alpha beta\n" in diff and "+alpha B\n" in diff
    assert read(http, sandbox, "/tmp/edit/a.txt") == b"alpha B\nB gamma\n"
    # all or nothing: one edit that finds nothing leaves the file untouched
    r = fs(
        http,
        sandbox,
        "edit-file",
        path="/tmp/edit/a.txt",
        edits=[{"find": "B", "replace": "b"}, {"find": "?"}],
    )
    assert r.status_code == 400
    assert read(http, sandbox, "/tmp/edit/a.txt") == b"alpha B\nB gamma\n"
    r = fs(
        http, sandbox, "edit-files", files=["/tmp/edit/a.txt", "/tmp/edit/b.txt", "/tmp/edit/none"], find="a"
    )
    assert [(i["file"], i["success"]) for i in r.json()["items"]] == [
        ("/tmp/edit/a.txt", True), ("/tmp/edit/b.txt", True), ("/tmp/edit/none", False),
    ]  # fmt: skip
    assert read(http, sandbox, "/tmp/edit/b.txt") == b"no mtch here\n"


def test_changes_and_status_codes(http: httpx.Client, sandbox: str) -> None:
    assert fs(http, sandbox, "mkdir", path="/tmp/ch/d", recursive=False).status_code == 404  # no parent
    assert fs(http, sandbox, "mkdir", path="/tmp/ch/d", recursive=True, permissions="700").status_code == 204
    assert sh(http, sandbox, "stat -c %a /tmp/ch/d") == "700\n"
    assert fs(http, sandbox, "mkdir", path="/tmp/ch/d", recursive=True).status_code == 409
    write(http, sandbox, "/tmp/ch/d/f", b"data")
    assert fs(http, sandbox, "delete", path="/tmp/ch/d", recursive=False).status_code == 409  # not empty
    assert (
        fs(http, sandbox, "copy", src_path="/tmp/ch/d", dst_path="/tmp/ch/e", recursive=False).status_code
        == 400
    )
    assert (
        fs(http, sandbox, "copy", src_path="/tmp/ch/d", dst_path="/tmp/ch/e", recursive=True).status_code
        == 204
    )
    assert read(http, sandbox, "/tmp/ch/e/f") == b"data"
    assert (
        fs(http, sandbox, "copy", src_path="/tmp/ch/d", dst_path="/tmp/ch/e", recursive=True).status_code
        == 409
    )
    assert (
        fs(http, sandbox, "copy", src_path="/tmp/ch/d", dst_path="/tmp/ch/d/in", recursive=True).status_code
        == 400
    )
    write(http, sandbox, "/tmp/ch/e/f", b"changed")
    r = fs(http, sandbox, "copy", src_path="/tmp/ch/d", dst_path="/tmp/ch/e", recursive=True, overwrite=True)
    assert r.status_code == 204 and read(http, sandbox, "/tmp/ch/e/f") == b"data"
    assert (
        fs(http, sandbox, "move", src_path="/tmp/ch/e", dst_path="/tmp/ch/d", overwrite=False).status_code
        == 409
    )
    assert (
        fs(http, sandbox, "move", src_path="/tmp/ch/e", dst_path="/tmp/ch/m", overwrite=False).status_code
        == 204
    )
    assert fs(http, sandbox, "exists", path="/tmp/ch/e").json() == {"exists": False}
    assert (
        fs(http, sandbox, "move", src_path="/tmp/ch/m/f", dst_path="/tmp/ch/d/f", overwrite=True).status_code
        == 204
    )
    r = fs(http, sandbox, "set-permissions", path="/tmp/ch/d/f", mode="640", owner="nobody", group="nogroup")
    assert r.status_code == 204
    assert sh(http, sandbox, "stat -c '%a %U %G' /tmp/ch/d/f") == "640 nobody nogroup\n"
    assert fs(http, sandbox, "set-permissions", path="/tmp/ch/d/f", owner="no-such-user").status_code == 400
    assert fs(http, sandbox, "delete", path="/tmp/ch", recursive=True).status_code == 204
    assert fs(http, sandbox, "stat", path="/tmp/ch").status_code == 404
    for op, body in (
        ("read-file", {"path": "/nope"}),
        ("stat", {"path": "/nope/x"}),
        ("ls", {"path": "/nope", "recursive": False}),
        ("delete", {"path": "/nope", "recursive": True}),
        ("move", {"src_path": "/nope", "dst_path": "/tmp/x", "overwrite": False}),
    ):
        r = fs(http, sandbox, op, **body)
        assert r.status_code == 404 and r.json()["message"], (op, r.text)
    assert fs(http, sandbox, "read-file", path="/tmp").status_code == 400  # a directory
    assert fs(http, sandbox, "delete", path="/", recursive=True).status_code == 403
    assert write(http, sandbox, "/.atoll/busybox", b"evil").status_code == 403
    assert fs(http, sandbox, "stat", path="/").json()["is_dir"] is True


def test_relative_paths_home_and_workdir(http: httpx.Client, sandbox: str) -> None:
    # the default template's workdir and HOME are /home/user: files, commands and terminals start there
    assert http.get(f"/v1/sandbox/{sandbox}/system/workdir").json() == {"workdir": "/home/user"}
    assert http.get(f"/v1/sandbox/{sandbox}/system/user-home-dir").json() == {"user_home_dir": "/home/user"}
    write(http, sandbox, "relative.txt", b"rel")  # relative to the workdir
    assert read(http, sandbox, "/home/user/relative.txt") == b"rel"
    assert api.run(http, sandbox, "pwd; echo $HOME")["stdout"] == "/home/user\n/home/user\n"


def test_paused_sandbox_resumes_on_a_filesystem_call(http: httpx.Client, server: ServerProcess) -> None:
    sid = api.create(http)["id"]
    try:
        write(http, sid, "/tmp/p", b"before")
        assert http.post(f"/v1/sandbox/{sid}/pause").status_code == 201
        assert read(http, sid, "/tmp/p") == b"before"
        assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
        assert fs(http, "sbxnosuchsandbox", "stat", path="/").status_code == 404
    finally:
        api.delete(http, sid)


# escapes ---------------------------------------------------------------------------------------
@pytest.fixture
def host_secret() -> Iterator[Path]:
    """A directory on the host with a secret in it; the tests check it is never read or changed."""
    top = Path(f"/var/tmp/atoll-escape-{secrets.token_hex(4)}")
    top.mkdir()
    (top / "secret").write_text("host secret\n")
    try:
        yield top
    finally:
        shutil.rmtree(top)


def test_escape_attempts_fail_and_touch_nothing_outside(
    http: httpx.Client, sandbox: str, host_secret: Path
) -> None:
    shadow = Path("/etc/shadow").read_bytes()
    sh(http, sandbox, "mkdir -p /esc && echo sandbox-shadow > /etc/shadow")
    sh(http, sandbox, f"ln -sfn /etc/shadow /esc/shadow && ln -sfn {host_secret}/secret /esc/secret")
    sh(http, sandbox, f"ln -sfn {host_secret} /esc/hostdir && ln -sfn /etc /esc/etc")
    sh(http, sandbox, "ln -sfn ../../../../../../.. /esc/up && ln -sfn /proc/1/root /esc/magic")
    # a link to /etc/shadow is the sandbox's /etc/shadow, never the host's
    assert read(http, sandbox, "/esc/shadow") == b"sandbox-shadow\n"
    sh(http, sandbox, "rm /etc/shadow")
    assert fs(http, sandbox, "read-file", path="/esc/shadow").status_code == 404
    assert write(http, sandbox, "/esc/shadow", b"x").status_code == 204  # recreates the sandbox's own
    # links to host paths lead nowhere: those paths do not exist in the sandbox
    for path in ("/esc/secret", "/esc/hostdir/secret", "/esc/up/" + str(host_secret)[1:] + "/secret"):
        assert fs(http, sandbox, "read-file", path=path).status_code == 404, path
    assert write(http, sandbox, "/esc/hostdir/new", b"x").status_code == 404
    assert fs(http, sandbox, "ls", path="/esc/hostdir", recursive=False).status_code == 404
    # a link to a directory that exists on both sides resolves inside the sandbox
    assert write(http, sandbox, "/esc/etc/atoll-escape-probe", b"inside").status_code == 204
    assert sh(http, sandbox, "cat /etc/atoll-escape-probe") == "inside"
    assert (
        fs(http, sandbox, "ls", path="/esc/up", recursive=False)
        .json()["items"][0]["path"]
        .startswith("/esc/up/")
    )
    # "..", however spelled, cannot climb out
    for path in ("/../../etc/passwd", "/tmp/../../etc/passwd", "../../../etc/passwd"):
        r = fs(http, sandbox, "read-file", path=path)
        assert r.status_code == 403, (path, r.text)
    assert write(http, sandbox, "/../escape", b"x").status_code == 403
    assert fs(http, sandbox, "move", src_path="/esc/etc", dst_path="/../x", overwrite=True).status_code == 403
    # magic links (/proc/<pid>/root) are refused, not followed
    assert fs(http, sandbox, "read-file", path="/esc/magic/etc/hostname").status_code in (400, 404)
    # nothing on the host changed
    assert Path("/etc/shadow").read_bytes() == shadow
    assert not Path("/etc/atoll-escape-probe").exists()
    assert sorted(p.name for p in host_secret.iterdir()) == ["secret"]
    assert (host_secret / "secret").read_text() == "host secret\n"


def test_swapping_a_directory_for_a_link_during_writes_never_escapes(
    http: httpx.Client, sandbox: str, server: ServerProcess, host_secret: Path
) -> None:
    target = host_secret / "landing"
    target.mkdir()
    # the link's target exists inside the sandbox too, so a late resolution would succeed there
    sh(http, sandbox, f"mkdir -p /race/d {target}")
    # one slow streaming write: its directory becomes a link while the body is still arriving
    started = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"first-"
        started.set()
        time.sleep(1.0)
        yield b"second"

    result: dict[str, int] = {}

    def slow_write() -> None:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
            r = client.post(
                f"/v1/sandbox/{sandbox}/filesystem/write-file",
                params={"path": "/race/d/slow"},
                content=slow_body(),
            )
            result["status"] = r.status_code

    writer = threading.Thread(target=slow_write)
    writer.start()
    assert started.wait(10)
    time.sleep(0.2)
    sh(http, sandbox, f"mv /race/d /race/d.moved && ln -s {target} /race/d")
    writer.join(30)
    assert result["status"] == 204
    assert sh(http, sandbox, "cat /race/d.moved/slow") == "first-second"  # kept its directory
    sh(http, sandbox, "rm /race/d && mv /race/d.moved /race/d")
    # many writes racing a loop that keeps flipping the directory and a link to a host path
    flipper = (
        "end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do "
        f"mv /race/d /race/x; ln -s {target} /race/d; rm /race/d; mv /race/x /race/d; done"
    )
    flip = threading.Thread(target=lambda: api.run(http, sandbox, flipper, timeout=20))
    flip.start()
    statuses = []
    deadline = time.monotonic() + 3
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
        n = 0
        while time.monotonic() < deadline:
            r = client.post(
                f"/v1/sandbox/{sandbox}/filesystem/write-file",
                params={"path": f"/race/d/f{n}"},
                content=b"payload",
            )
            statuses.append(r.status_code)
            n += 1
    flip.join(30)
    assert set(statuses) <= {204, 404}, statuses
    assert statuses.count(204) > 0
    assert list(target.iterdir()) == []  # the host's directory never received anything
    assert sorted(p.name for p in host_secret.iterdir()) == ["landing", "secret"]


# large files -----------------------------------------------------------------------------------
def _server_pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_one_gigabyte_streams_through_without_growing_the_server(
    http: httpx.Client, sandbox: str, server: ServerProcess
) -> None:
    size = 10**9  # 1 GB (the test server's sandboxes have a 1 GiB disk)
    block = hashlib.sha256(b"atoll").digest() * 32768  # 1 MiB, not all one byte
    blocks, rest = divmod(size, len(block))
    pid = _server_pid(server)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _peak_rss_kib(pid)

    def body() -> Iterator[bytes]:
        for _ in range(blocks):
            yield block
        yield block[:rest]

    started = time.monotonic()
    r = http.post(
        f"/v1/sandbox/{sandbox}/filesystem/write-file",
        params={"path": "/tmp/big.bin"},
        content=body(),
        timeout=600,
    )
    assert r.status_code == 204, r.text
    wrote = time.monotonic() - started
    digest = hashlib.sha256()
    received = 0
    started = time.monotonic()
    with http.stream(
        "POST", f"/v1/sandbox/{sandbox}/filesystem/read-file", json={"path": "/tmp/big.bin"}
    ) as s:
        assert s.status_code == 200 and int(s.headers["content-length"]) == size
        for chunk in s.iter_bytes():
            digest.update(chunk)
            received += len(chunk)
    read_s = time.monotonic() - started
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)
    expected.update(block[:rest])
    assert received == size and digest.hexdigest() == expected.hexdigest()
    growth_mib = (_peak_rss_kib(pid) - before) / 1024
    print(f"\n1 GB write {wrote:.1f}s, read {read_s:.1f}s, server peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 16, f"the server grew by {growth_mib:.1f} MiB while streaming 1 GB"
    assert fs(http, sandbox, "delete", path="/tmp/big.bin", recursive=False).status_code == 204
