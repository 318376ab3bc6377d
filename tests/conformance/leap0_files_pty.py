"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself):
the filesystem, PTY and template services (wire-protocol §12 items 15, 17, 19).

Usage: leap0_files_pty.py BASE_URL API_KEY CHECK [ARG]
Prints one JSON object with what the SDK observed for CHECK."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from leap0 import Leap0Client
from leap0.models.errors import Leap0ConflictError, Leap0Error, Leap0NotFoundError, Leap0PermissionError
from leap0.models.filesystem import FileEdit


def status_of(call: Any) -> str:
    try:
        call()
        return "ok"
    except Leap0Error as exc:
        return type(exc).__name__


def filesystem(client: Leap0Client, _: str) -> dict[str, object]:
    sandbox = client.sandboxes.create()
    fs = sandbox.filesystem
    seen: dict[str, object] = {}
    try:
        binary = bytes(range(256)) * 100 + os.urandom(10_000)
        fs.write_bytes(path="/tmp/c/bin.dat", content=binary)
        seen["bytes"] = fs.read_bytes(path="/tmp/c/bin.dat") == binary
        fs.write_file(path="/tmp/c/t.txt", content="a\nb\nc\nd\n")
        seen["text"] = fs.read_file(path="/tmp/c/t.txt")
        seen["head"] = fs.read_file(path="/tmp/c/t.txt", head=2)
        seen["tail"] = fs.read_file(path="/tmp/c/t.txt", tail=1)
        fs.write_files(files={"/tmp/c/m1.txt": "one", "/tmp/c/m2.txt": ""})
        fs.write_files_bytes(files={"/tmp/c/m3.bin": binary[:1000]})
        got = fs.read_files_bytes(paths=["/tmp/c/m1.txt", "/tmp/c/m2.txt", "/tmp/c/m3.bin"])
        seen["read_files"] = [
            got["/tmp/c/m1.txt"].decode(),
            got["/tmp/c/m2.txt"].decode(),
            got["/tmp/c/m3.bin"] == binary[:1000],
        ]
        seen["ls"] = [(i.name, i.is_dir) for i in fs.ls(path="/tmp/c").items]
        info = fs.stat(path="/tmp/c/t.txt")
        seen["stat"] = [
            info.name,
            info.path,
            info.size,
            info.mode,
            info.owner,
            info.is_symlink,
            info.mtime > 0,
        ]
        seen["exists"] = [fs.exists(path="/tmp/c/t.txt"), fs.exists(path="/tmp/c/none")]
        seen["tree"] = [(e.name, e.type) for e in fs.tree(path="/tmp", max_depth=1).items]
        seen["glob"] = fs.glob(path="/tmp/c", pattern="*.txt")
        seen["grep"] = [(m.path, m.line, m.content) for m in fs.grep(path="/tmp/c", pattern="^c$")]
        edit = fs.edit_file(path="/tmp/c/t.txt", edits=[FileEdit(find="b", replace="B")])
        seen["edit_file"] = [edit.replacements, "+B" in edit.diff]
        seen["edit_files"] = [
            (r.file, r.success) for r in fs.edit_files(paths=["/tmp/c/t.txt"], find="B", replace="b")
        ]
        fs.mkdir(path="/tmp/c/dir/sub", recursive=True, permissions="750")
        fs.copy(src_path="/tmp/c/t.txt", dst_path="/tmp/c/dir/copy.txt")
        fs.move(src_path="/tmp/c/dir/copy.txt", dst_path="/tmp/c/dir/moved.txt")
        fs.set_permissions(path="/tmp/c/dir/moved.txt", mode="600", owner="nobody")
        moved = fs.stat(path="/tmp/c/dir/moved.txt")
        seen["after_changes"] = [moved.mode, moved.owner, fs.read_file(path="/tmp/c/dir/moved.txt")]
        fs.delete(path="/tmp/c/dir", recursive=True)
        seen["deleted"] = fs.exists(path="/tmp/c/dir")
        seen["errors"] = [
            status_of(lambda: fs.read_file(path="/tmp/c/none")),
            status_of(lambda: fs.mkdir(path="/tmp/c")),
            status_of(lambda: fs.read_file(path="/../../etc/passwd")),
            status_of(lambda: fs.copy(src_path="/tmp/c/t.txt", dst_path="/tmp/c/m1.txt")),
        ]
        seen["home"] = [sandbox.get_user_home_dir(), sandbox.get_workdir()]
    finally:
        sandbox.delete()
    return seen


def pty(client: Leap0Client, _: str) -> dict[str, object]:
    sandbox = client.sandboxes.create()
    try:
        created = sandbox.pty.create(session_id="t", cols=80, rows=24)
        conn = sandbox.pty.connect("t")
        conn.send(b"echo hi\n")
        out = b""
        deadline = time.monotonic() + 15
        while b"hi\r\n" not in out and time.monotonic() < deadline:
            out += conn.recv()
        resized = sandbox.pty.resize("t", cols=100, rows=30)
        conn.send(b"stty size\n")
        while b"30 100" not in out and time.monotonic() < deadline:
            out += conn.recv()
        listed = [s.id for s in sandbox.pty.list()]
        conn.close()
        sandbox.pty.delete("t")
        return {
            "created": [created.id, created.cols, created.rows, created.active],
            "echo": b"hi\r\n" in out,
            "resized": [resized.cols, resized.rows],
            "stty": b"30 100" in out,
            "listed": listed,
            "after_delete": [s.id for s in sandbox.pty.list()],
        }
    finally:
        sandbox.delete()


def templates(client: Leap0Client, uri: str) -> dict[str, object]:
    template = client.templates.create(name="t1", uri=uri)
    seen: dict[str, object] = {
        "template": [
            bool(template.id),
            template.name,
            template.digest.startswith("sha256:"),
            template.is_system,
        ],
        "image_config": [template.image_config.entrypoint, template.image_config.working_dir]
        if template.image_config
        else None,
    }
    try:
        client.templates.create(name="t1", uri=uri)
        seen["duplicate"] = "ok"
    except Leap0ConflictError:
        seen["duplicate"] = "Leap0ConflictError"
    sandbox = client.sandboxes.create(template_name="t1")
    seen["boot"] = [
        sandbox.template_id == template.id,
        sandbox.process.execute(command="cat /www/index.html").stdout,
    ]
    try:
        client.templates.delete(template.id)
        seen["delete_in_use"] = "ok"
    except Leap0ConflictError:
        seen["delete_in_use"] = "Leap0ConflictError"
    sandbox.delete()
    client.templates.rename(template.id, name="t2")
    client.templates.delete(template.id)
    try:
        client.templates.delete(template.id)
    except Leap0NotFoundError:
        seen["deleted"] = True
    return seen


CHECKS = {"filesystem": filesystem, "pty": pty, "templates": templates}


def main() -> None:
    base_url, api_key, check = sys.argv[1:4]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    with Leap0Client(api_key=api_key, base_url=base_url, sandbox_domain="sbx.local") as client:
        print(json.dumps(CHECKS[check](client, arg)))


if __name__ == "__main__":
    assert Leap0PermissionError  # imported for the error names the checks report
    main()
