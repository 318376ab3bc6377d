"""The filesystem API (wire-protocol §8) and the sandbox's home and working directories.

Every call resumes a paused sandbox, then works on its root filesystem from the host through
``atoll.runtime.confined`` (kernel-confined path resolution, see there for why that is safe).
Blocking work runs in worker threads. File contents stream both ways in chunks of at most
``CHUNK`` bytes: a write never holds more than one chunk, a read never more than one either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from atoll import _multipart as multipart
from atoll._exceptions import BadRequestError
from atoll.runtime import confined, file_walk, files, idmap, replace
from atoll.runtime.confined import Root, normalize
from atoll.server import fs_schemas as s
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.state import services
from atoll.templates.registry import Template

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}", tags=["filesystem"])
Org = Annotated[str, Depends(require_org)]
T = TypeVar("T")
CHUNK = 256 * 1024
OCTET = "application/octet-stream"


def route(path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """POST at ``path`` and at ``path/`` (the leap0 SDK follows no redirects)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        router.post(path, **kwargs)(fn)
        router.post(path + "/", include_in_schema=False, **kwargs)(fn)
        return fn

    return register


@dataclass
class Sandbox:
    root: Root
    template: Template

    @property
    def workdir(self) -> str:
        return self.template.workdir or "/"

    def path(self, value: str) -> str:
        return normalize(value, base=self.workdir)


@contextlib.asynccontextmanager
async def sandbox(request: Request, org: str, sandbox_id: str) -> AsyncIterator[Sandbox]:
    manager = services(request).manager
    row = await manager.ensure_running(await manager.get(org, sandbox_id))
    template = manager.template_for(row)
    root = await asyncio.to_thread(Root.open, str(manager.host.sandbox_dir(row.id) / "rootfs"))
    # in a user namespace, files are created as the sandbox's mapped root (idmap.context_fs_owner)
    ranges = getattr(manager.host.backend_for(row), "userns", None)
    id_range = ranges.of(row.id) if ranges is not None else None
    owner = idmap.FS_OWNER.set(id_range.base if id_range is not None else None)
    try:
        yield Sandbox(root, template)
    finally:
        idmap.FS_OWNER.reset(owner)
        root.close()


def _call(fn: Callable[[], T], path: str) -> T:
    with confined.mapped(path), idmap.context_fs_owner():
        return fn()


async def work(fn: Callable[[], T], path: str) -> T:
    """Run blocking filesystem work in a thread; OSErrors become API errors naming ``path``."""
    return await asyncio.to_thread(_call, fn, path)


def no_content() -> Response:
    return Response(status_code=204)


# metadata -------------------------------------------------------------------------------------
@route("/filesystem/ls", **rm.answers(rm.FileList))
async def ls(sandbox_id: str, body: s.LsBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        accounts = files.Accounts(sb.root)
        items = await work(
            lambda: file_walk.ls(
                sb.root, path, recursive=body.recursive, exclude=body.exclude or (), accounts=accounts
            ),
            path,
        )
    return {"items": [item.to_dict() for item in items]}


@route("/filesystem/stat", **rm.answers(rm.FileEntry))
async def stat(sandbox_id: str, body: s.PathBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        accounts = files.Accounts(sb.root)
        info = await work(lambda: files.info_of(sb.root, path, accounts), path)
    return info.to_dict()


@route("/filesystem/exists", **rm.answers(rm.Exists))
async def exists(sandbox_id: str, body: s.PathBody, org: Org, request: Request) -> dict[str, bool]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        found = await work(lambda: sb.root.exists(path), path)
    return {"exists": found}


@route("/filesystem/tree", **rm.answers(rm.Tree))
async def tree(sandbox_id: str, body: s.TreeBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        items = await work(
            lambda: file_walk.tree(sb.root, path, max_depth=body.max_depth, exclude=body.exclude or ()), path
        )
    return {"items": items}


@route("/filesystem/glob", **rm.answers(rm.PathList))
async def glob(sandbox_id: str, body: s.GlobBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        items = await work(
            lambda: file_walk.glob(sb.root, path, body.pattern, exclude=body.exclude or ()), path
        )
    return {"items": items}


@route("/filesystem/grep", **rm.answers(rm.GrepMatches))
async def grep(sandbox_id: str, body: s.GrepBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        items = await work(
            lambda: file_walk.grep(
                sb.root, path, body.pattern, include=body.include, exclude=body.exclude or ()
            ),
            path,
        )
    return {"items": items}


# changes --------------------------------------------------------------------------------------
@route("/filesystem/mkdir", status_code=204)
async def mkdir(sandbox_id: str, body: s.MkdirBody, org: Org, request: Request) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        await work(
            lambda: files.mkdir(sb.root, path, recursive=body.recursive, permissions=body.permissions), path
        )
    return no_content()


@route("/filesystem/delete", status_code=204)
async def delete(sandbox_id: str, body: s.DeleteBody, org: Org, request: Request) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        await work(lambda: files.delete(sb.root, path, recursive=body.recursive), path)
    return no_content()


@route("/filesystem/set-permissions", status_code=204)
async def set_permissions(
    sandbox_id: str, body: s.SetPermissionsBody, org: Org, request: Request
) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        accounts = files.Accounts(sb.root)
        await work(
            lambda: files.set_permissions(
                sb.root, path, mode=body.mode, owner=body.owner, group=body.group, accounts=accounts
            ),
            path,
        )
    return no_content()


@route("/filesystem/move", status_code=204)
async def move(sandbox_id: str, body: s.MoveBody, org: Org, request: Request) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        src, dst = sb.path(body.src_path), sb.path(body.dst_path)
        await work(lambda: replace.move(sb.root, src, dst, overwrite=body.overwrite), src)
    return no_content()


@route("/filesystem/copy", status_code=204)
async def copy(sandbox_id: str, body: s.CopyBody, org: Org, request: Request) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        src, dst = sb.path(body.src_path), sb.path(body.dst_path)
        await work(
            lambda: replace.copy(sb.root, src, dst, recursive=body.recursive, overwrite=bool(body.overwrite)),
            src,
        )
    return no_content()


@route("/filesystem/edit-file", **rm.answers(rm.EditResult))
async def edit_file(sandbox_id: str, body: s.EditFileBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        edits = [(e.find, e.replace) for e in body.edits]
        diff, count = await work(lambda: files.edit_file(sb.root, path, edits), path)
    return {"diff": diff, "replacements": count}


@route("/filesystem/edit-files", **rm.answers(rm.EditFilesResult))
async def edit_files(sandbox_id: str, body: s.EditFilesBody, org: Org, request: Request) -> dict[str, Any]:
    async with sandbox(request, org, sandbox_id) as sb:
        paths = [sb.path(p) for p in body.files]
        items = await work(lambda: files.edit_files(sb.root, paths, body.find, body.replace), "/")
    for item, original in zip(items, body.files, strict=True):
        item["file"] = original  # answer with the caller's spelling of each path
    return {"items": items}


# contents -------------------------------------------------------------------------------------
async def _write_stream(fd: int, chunks: AsyncIterator[bytes]) -> None:
    """Write what arrives, handing the disk at most ``CHUNK`` bytes at a time."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        if len(pending) >= CHUNK:
            data, pending = pending, bytearray()
            await asyncio.to_thread(replace.write_all, fd, data)
    if pending:
        await asyncio.to_thread(replace.write_all, fd, pending)


@route("/filesystem/write-file", status_code=204)
async def write_file(
    sandbox_id: str,
    org: Org,
    request: Request,
    path: Annotated[str, Query(min_length=1, max_length=4096)],
    permissions: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        target = sb.path(path)
        version = await work(lambda: files.open_for_write(sb.root, target, permissions=permissions), target)
    try:
        with confined.mapped(target):
            await _write_stream(version.fd, request.stream())
    except BaseException:
        version.abort()  # a client that gave up (or an error) leaves the old file as it was
        raise
    await work(version.commit, target)
    return no_content()


@route("/filesystem/write-files", status_code=204)
async def write_files(sandbox_id: str, org: Org, request: Request) -> Response:
    try:
        parser = multipart.MultipartParser(multipart.boundary_of(request.headers.get("content-type", "")))
    except multipart.MultipartError as exc:
        raise BadRequestError(f"write-files takes multipart/form-data: {exc}") from None
    async with sandbox(request, org, sandbox_id) as sb:
        writer = _PartWriter(sb)
        try:
            async for chunk in request.stream():
                for event in parser.feed(chunk):
                    await writer.handle(event)
            parser.close()
        except multipart.MultipartError as exc:
            raise BadRequestError(f"malformed multipart body: {exc}") from None
        finally:
            writer.abort()
    return no_content()


class _PartWriter:
    """Writes each part of a write-files body to the file its name gives, as it streams in."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.version: replace.NewVersion | None = None
        self.path = "/"
        self.pending = bytearray()

    async def handle(self, event: multipart.Event) -> None:
        kind, value = event
        if kind == "part":
            assert isinstance(value, multipart.Part)
            if value.name is None:
                raise BadRequestError("every part needs a name: the path of its file")
            self.path = self.sb.path(value.name)
            target = self.path
            self.version = await work(
                lambda: files.open_for_write(self.sb.root, target, permissions=None), target
            )
        elif kind == "data" and self.version is not None:
            assert isinstance(value, bytes)
            self.pending += value
            if len(self.pending) >= CHUNK:
                await self._flush()
        elif kind == "end" and self.version is not None:
            await self._flush()
            version, self.version = self.version, None
            await work(version.commit, self.path)  # each file whole, as its part ends

    async def _flush(self) -> None:
        data, self.pending = self.pending, bytearray()
        if data and self.version is not None:
            fd = self.version.fd
            await work(lambda: replace.write_all(fd, data), self.path)

    def abort(self) -> None:
        """The part being written when the body broke off is dropped; its file stays as it was."""
        if self.version is not None:
            self.version.abort()
            self.version = None


class OwnedFd:
    """An fd closed exactly once: by whoever streams it, or when it is dropped unread (a
    response that was never sent because its client left first)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def _read_chunks(fd: int, start: int, end: int) -> Iterator[bytes]:
    position = start
    while position < end:
        chunk = os.pread(fd, min(CHUNK, end - position), position)
        if not chunk:
            return  # the file shrank meanwhile
        position += len(chunk)
        yield chunk


async def _stream(owned: OwnedFd, start: int, end: int) -> AsyncIterator[bytes]:
    chunks = _read_chunks(owned.fd, start, end)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        owned.close()


@route("/filesystem/read-file", **rm.streams(OCTET, "The file's bytes (or the range asked for)", binary=True))
async def read_file(sandbox_id: str, body: s.ReadFileBody, org: Org, request: Request) -> Response:
    async with sandbox(request, org, sandbox_id) as sb:
        path = sb.path(body.path)
        owned = OwnedFd(await work(lambda: sb.root.open_regular(path, os.O_RDONLY), path))
    try:
        start, end = await work(
            lambda: file_walk.read_range(
                owned.fd, offset=body.offset, limit=body.limit, head=body.head, tail=body.tail
            ),
            path,
        )
    except BaseException:
        owned.close()
        raise
    return StreamingResponse(
        _stream(owned, start, end), media_type=OCTET, headers={"content-length": str(end - start)}
    )


def _check_readable(root: Root, path: str) -> None:
    os.close(root.open_regular(path, os.O_RDONLY))


async def _multipart_stream(root: Root, items: list[tuple[str, str]], boundary: str) -> AsyncIterator[bytes]:
    """One part per file, each opened only when its turn comes (a thousand paths never hold a
    thousand fds). A file removed since the check ends the body early, and the client sees a
    truncated document rather than a wrong one."""
    try:
        for name, path in items:
            fd = await work(partial(root.open_regular, path, os.O_RDONLY), path)
            try:
                yield b"--" + boundary.encode() + b"\r\n" + multipart.part_header(name)
                size = os.fstat(fd).st_size
                chunks = _read_chunks(fd, 0, size)
                while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                    yield chunk
                yield b"\r\n"
            finally:
                os.close(fd)
        yield b"--" + boundary.encode() + b"--\r\n"
    finally:
        root.close()


@route(
    "/filesystem/read-files", **rm.streams("multipart/form-data", "One part per file, as asked", binary=True)
)
async def read_files(sandbox_id: str, body: s.ReadFilesBody, org: Org, request: Request) -> Response:
    manager = services(request).manager
    async with sandbox(request, org, sandbox_id) as sb:
        items = [(name, sb.path(name)) for name in body.paths]
        for _, path in items:  # every path is checked before the answer starts: 404 means 404
            await work(partial(_check_readable, sb.root, path), path)
        root = await asyncio.to_thread(Root.open, str(manager.host.sandbox_dir(sandbox_id) / "rootfs"))
    boundary = multipart.new_boundary()
    return StreamingResponse(
        _multipart_stream(root, items, boundary), media_type=f"multipart/form-data; boundary={boundary}"
    )


# the sandbox's user ---------------------------------------------------------------------------
def _home(root: Root, template: Template) -> str:
    accounts = files.Accounts(root)
    if template.user:
        home = accounts.home(template.user)
        if home:
            return home
    return template.sandbox_env().get("HOME") or accounts.home("root") or "/root"


@router.get("/system/user-home-dir", **rm.answers(rm.UserHomeDir))
@router.get("/system/user-home-dir/", include_in_schema=False, **rm.answers(rm.UserHomeDir))
async def user_home_dir(sandbox_id: str, org: Org, request: Request) -> dict[str, str]:
    async with sandbox(request, org, sandbox_id) as sb:
        home = await work(lambda: _home(sb.root, sb.template), "/etc/passwd")
    return {"user_home_dir": home}


@router.get("/system/workdir", **rm.answers(rm.Workdir))
@router.get("/system/workdir/", include_in_schema=False, **rm.answers(rm.Workdir))
async def workdir(sandbox_id: str, org: Org, request: Request) -> dict[str, str]:
    manager = services(request).manager
    row = await manager.ensure_running(await manager.get(org, sandbox_id))
    return {"workdir": manager.template_for(row).workdir or "/"}
