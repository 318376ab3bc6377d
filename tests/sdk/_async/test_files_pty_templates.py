"""``sandbox.filesystem``, ``sandbox.pty`` and ``client.templates`` against a fake control plane:
what goes on the wire, how answers are parsed, and what is refused before sending."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from atoll import (
    AsyncClient,
    AsyncSandbox,
    ConflictError,
    FileEdit,
    FileInfo,
    InvalidArgument,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    PtySession,
    Template,
    TreeEntry,
)
from atoll._multipart import MultipartParser, boundary_of, new_boundary, part_header

from .._mock import Router, sandbox_json

FS = "/v1/sandbox/sbx-abc123/filesystem"
PTY = "/v1/sandbox/sbx-abc123/pty"
TEMPLATE = {
    "id": "tpl-1",
    "name": "web",
    "digest": "sha256:ab",
    "image_config": {
        "entrypoint": ["/bin/httpd"],
        "cmd": ["-f"],
        "working_dir": "/www",
        "user": "",
        "env": {},
    },
    "is_system": False,
    "created_at": "2026-01-01T00:00:00Z",
}


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
    )


async def created(router: Router) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router).sandboxes.create()


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_metadata_calls_send_the_wire_bodies_and_parse_answers() -> None:
    router = Router()
    sandbox = await created(router)
    info = {"name": "a", "path": "/a", "is_dir": False, "size": 3, "mode": "644", "mtime": 5, "owner": "root"}
    router.on("POST", f"{FS}/ls", json={"items": [info]})
    router.on("POST", f"{FS}/stat", json={**info, "is_symlink": True, "link_target": "/b"})
    router.on("POST", f"{FS}/exists", json={"exists": True})
    router.on(
        "POST",
        f"{FS}/tree",
        json={"items": [{"name": "d", "type": "directory", "children": [{"name": "f"}]}]},
    )
    router.on("POST", f"{FS}/glob", json={"items": ["/a"]})
    router.on("POST", f"{FS}/grep", json={"items": [{"path": "/a", "line": 2, "content": "x"}]})
    listing = await sandbox.filesystem.ls(path="/", exclude=["*.pyc"])
    assert listing == [FileInfo(name="a", path="/a", size=3, mode="644", mtime=5, owner="root")]
    assert body(router.requests[-1]) == {"path": "/", "recursive": False, "exclude": ["*.pyc"]}
    stat = await sandbox.filesystem.stat(path="/a")
    assert stat.is_symlink and stat.link_target == "/b"
    assert await sandbox.filesystem.exists(path="/a") is True
    tree = await sandbox.filesystem.tree(path="/", max_depth=2)
    assert tree == [TreeEntry(name="d", type="directory", children=[TreeEntry(name="f")])] and tree[0].is_dir
    assert body(router.requests[-1]) == {"path": "/", "max_depth": 2}
    assert await sandbox.filesystem.glob(path="/", pattern="**/*") == ["/a"]
    matches = await sandbox.filesystem.grep(path="/", pattern="x", include="*.py")
    assert (matches[0].path, matches[0].line, matches[0].content) == ("/a", 2, "x")
    assert body(router.requests[-1]) == {"path": "/", "pattern": "x", "include": "*.py"}


async def test_changes_expect_204_and_map_errors() -> None:
    router = Router()
    sandbox = await created(router)
    for op in ("mkdir", "delete", "set-permissions", "move", "copy"):
        router.on("POST", f"{FS}/{op}", 204)
    await sandbox.filesystem.mkdir(path="/d", recursive=True, permissions="750")
    assert body(router.requests[-1]) == {"path": "/d", "recursive": True, "permissions": "750"}
    await sandbox.filesystem.delete(path="/d")
    assert body(router.requests[-1]) == {"path": "/d", "recursive": False}
    await sandbox.filesystem.set_permissions(path="/d", mode="600", owner="nobody")
    assert body(router.requests[-1]) == {"path": "/d", "mode": "600", "owner": "nobody"}
    await sandbox.filesystem.move(src_path="/a", dst_path="/b")
    assert body(router.requests[-1]) == {"src_path": "/a", "dst_path": "/b", "overwrite": False}
    await sandbox.filesystem.copy(src_path="/a", dst_path="/b", recursive=True, overwrite=True)
    assert body(router.requests[-1]) == {
        "src_path": "/a",
        "dst_path": "/b",
        "recursive": True,
        "overwrite": True,
    }
    router.on("POST", f"{FS}/read-file", 404, json={"message": "/x: no such file or directory"})
    with pytest.raises(NotFoundError, match="no such file"):
        await sandbox.filesystem.read_file(path="/x")
    router.on("POST", f"{FS}/read-file", 403, json={"message": "escapes the sandbox root"})
    with pytest.raises(PermissionDeniedError):
        await sandbox.filesystem.read_bytes(path="/../x")
    router.on("POST", f"{FS}/mkdir", 409, json={"message": "/d: already exists"})
    with pytest.raises(ConflictError):
        await sandbox.filesystem.mkdir(path="/d")


async def test_edits() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{FS}/edit-file", json={"diff": "--- a\n", "replacements": 2})
    router.on("POST", f"{FS}/edit-files", json={"items": [{"file": "/a", "success": False, "error": "nope"}]})
    result = await sandbox.filesystem.edit_file(path="/a", edits=[FileEdit("x", "y"), ("p", "q")])
    assert (result.diff, result.replacements) == ("--- a\n", 2)
    assert body(router.requests[-1]) == {
        "path": "/a",
        "edits": [{"find": "x", "replace": "y"}, {"find": "p", "replace": "q"}],
    }
    results = await sandbox.filesystem.edit_files(paths=["/a"], find="x")
    assert (results[0].file, results[0].success, results[0].error) == ("/a", False, "nope")
    assert body(router.requests[-1]) == {"files": ["/a"], "find": "x", "replace": ""}


async def test_contents_raw_query_and_multipart_both_ways() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{FS}/write-file", 204)
    router.on("POST", f"{FS}/write-files", 204)
    await sandbox.filesystem.write_file(path="/ü.txt", content="héllo", permissions="600")
    sent = router.requests[-1]
    assert sent.url.params == httpx.QueryParams({"path": "/ü.txt", "permissions": "600"})
    assert sent.headers["content-type"] == "application/octet-stream" and sent.content == "héllo".encode()
    files = {"/a": b"\x00\x01", "/b ✓": b"", '/c"q': b"x" * 70_000}
    await sandbox.filesystem.write_files_bytes(files=files)
    sent = router.requests[-1]
    parser = MultipartParser(boundary_of(sent.headers["content-type"]))
    names: list[str | None] = []
    for kind, value in parser.feed(sent.content):
        if kind == "part":
            assert value.headers["content-type"] == "application/octet-stream"  # type: ignore[union-attr]
            assert 'filename="upload"' in value.headers["content-disposition"]  # type: ignore[union-attr]
            names.append(value.name)  # type: ignore[union-attr]
    assert names == list(files)
    # read-files: an octet-stream multipart answer, parsed by name
    boundary = new_boundary()
    answer = b"".join(
        b"--" + boundary.encode() + b"\r\n" + part_header(name) + data + b"\r\n"
        for name, data in files.items()
    )
    answer += b"--" + boundary.encode() + b"--\r\n"
    router.on(
        "POST",
        f"{FS}/read-files",
        content=answer,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert await sandbox.filesystem.read_files_bytes(paths=list(files)) == files
    router.on("POST", f"{FS}/read-files", content=b"{}", headers={"content-type": "application/json"})
    with pytest.raises(MalformedResponseError):
        await sandbox.filesystem.read_files(paths=["/a"])
    router.on("POST", f"{FS}/read-file", content=b"two\n")
    assert await sandbox.filesystem.read_file(path="/l", offset=4, head=1) == "two\n"
    assert body(router.requests[-1]) == {"path": "/l", "offset": 4, "head": 1}


async def test_arguments_are_checked_before_sending() -> None:
    router = Router()
    sandbox = await created(router)
    sent = len(router.requests)
    for call, field in (
        (lambda: sandbox.filesystem.read_file(path="/a", head=1, tail=1), "head"),
        (lambda: sandbox.filesystem.read_file(path="", head=1), "path"),
        (lambda: sandbox.filesystem.read_bytes(path="/a", offset=-1), "offset"),
        (lambda: sandbox.filesystem.mkdir(path="/a", permissions="rwx"), "permissions"),
        (lambda: sandbox.filesystem.set_permissions(path="/a"), "mode"),
        (lambda: sandbox.filesystem.edit_file(path="/a", edits=[]), "edits"),
        (lambda: sandbox.filesystem.edit_file(path="/a", edits=[("", "x")]), "edits[0].find"),
        (lambda: sandbox.filesystem.tree(path="/a", max_depth=0), "max_depth"),
        (lambda: sandbox.filesystem.write_bytes(path="/a", content="text"), "content"),  # type: ignore[arg-type]
        (lambda: sandbox.pty.create(cols=0), "cols"),
        (lambda: sandbox.pty.create(session_id="a/b"), "session_id"),
    ):
        with pytest.raises(InvalidArgument) as bad:
            await call()
        assert bad.value.field == field
    assert len(router.requests) == sent


async def test_pty_rest_calls() -> None:
    router = Router()
    sandbox = await created(router)
    info = {"id": "t", "cwd": "/", "envs": {}, "cols": 80, "rows": 24, "created_at": "x", "active": True}
    router.on("POST", PTY, 201, json=info)
    router.on("GET", PTY, json={"items": [info]})
    router.on("GET", f"{PTY}/t", json=info)
    router.on("POST", f"{PTY}/t/resize", json={**info, "cols": 100})
    router.on("DELETE", f"{PTY}/t", 204)
    session = await sandbox.pty.create(session_id="t", cols=80, rows=24, envs={"A": "1"}, lazy_start=True)
    assert session == PtySession(id="t", cwd="/", cols=80, rows=24, created_at="x", active=True)
    assert body(router.requests[-1]) == {
        "id": "t",
        "cols": 80,
        "rows": 24,
        "envs": {"A": "1"},
        "lazy_start": True,
    }
    assert [s.id for s in await sandbox.pty.list()] == ["t"]
    assert (await sandbox.pty.get("t")).rows == 24
    assert (await sandbox.pty.resize("t", cols=100, rows=24)).cols == 100
    assert body(router.requests[-1]) == {"cols": 100, "rows": 24}
    await sandbox.pty.delete("t")
    assert sandbox.pty.websocket_url("t") == "ws://api.test/v1/sandbox/sbx-abc123/pty/t/connect"


async def test_templates() -> None:
    router = Router()
    client = make_client(router)
    router.on("POST", "/v1/template", 201, json=TEMPLATE)
    router.on("GET", "/v1/templates", json={"items": [TEMPLATE], "total_items": 1})
    router.on("GET", "/v1/template/tpl-1", json=TEMPLATE)
    router.on("PATCH", "/v1/template/tpl-1", 204)
    router.on("DELETE", "/v1/template/tpl-1", 204)
    creds = {"type": "basic", "username": "u", "password": "p"}
    template = await client.templates.create(name="web", uri="docker.io/x/y:1", credentials=creds)
    assert isinstance(template, Template) and template.image_config is not None
    assert template.image_config.entrypoint == ["/bin/httpd"] and template.image_config.working_dir == "/www"
    assert body(router.requests[-1]) == {"name": "web", "uri": "docker.io/x/y:1", "credentials": creds}
    assert [t.name for t in await client.templates.list()] == ["web"]
    assert (await client.templates.get("tpl-1")).digest == "sha256:ab"
    await client.templates.rename("tpl-1", name="web2")
    assert body(router.requests[-1]) == {"name": "web2"}
    await client.templates.delete("tpl-1")
    for kwargs, field in (
        ({"name": "system/x", "uri": "u"}, "name"),
        ({"name": "a b", "uri": "u"}, "name"),
        ({"name": "ok", "uri": ""}, "uri"),
        ({"name": "ok", "uri": "u", "credentials": {"type": "aws"}}, "credentials"),
    ):
        with pytest.raises(InvalidArgument) as bad:
            await client.templates.create(**kwargs)
        assert bad.value.field == field


async def test_template_import_progress_stream() -> None:
    router = Router()
    client = make_client(router)
    lines = [
        {"phase": "pull", "message": "Copying blob sha256:1"},
        {"phase": "unpack", "message": "unpacking"},
        {"template": TEMPLATE},
    ]
    router.on("POST", "/v1/template", 201, content=b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    events: list[tuple[str, str]] = []
    template = await client.templates.create(
        name="web", uri="u", on_progress=lambda p, m: events.append((p, m))
    )
    assert template.id == "tpl-1"
    assert events == [("pull", "Copying blob sha256:1"), ("unpack", "unpacking")]
    assert router.requests[-1].headers["accept"] == "application/x-ndjson"
    failing = [{"phase": "pull", "message": "x"}, {"error": {"status": 409, "message": "taken"}}]
    router.on("POST", "/v1/template", 201, content=b"".join(json.dumps(x).encode() + b"\n" for x in failing))
    with pytest.raises(ConflictError, match="taken"):
        await client.templates.create(name="web", uri="u", on_progress=lambda p, m: None)
    router.on("POST", "/v1/template", 201, content=b'{"phase": "pull", "message": "x"}\n')
    with pytest.raises(MalformedResponseError):
        await client.templates.create(name="web", uri="u", on_progress=lambda p, m: None)
