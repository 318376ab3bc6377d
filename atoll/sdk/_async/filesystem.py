"""``sandbox.filesystem``: files inside one sandbox (wire-protocol §8).

Text helpers (``write_file``, ``read_file`` ...) encode and decode with ``encoding``; the
``*_bytes`` variants move raw bytes. ``upload`` and ``download`` stream a local file in chunks,
so a large file never has to fit in memory. Relative paths are resolved by the server against
the sandbox's working directory. Missing paths raise ``NotFoundError``, paths outside the
sandbox or Atoll's own files ``PermissionDeniedError``, existing targets ``ConflictError``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import IO, Any, TypeAlias

from atoll import _multipart as multipart
from atoll._exceptions import InvalidArgument, MalformedResponseError
from atoll.sdk._async import observe
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._files import (
    EditFileResult,
    EditResult,
    EditSpec,
    FileInfo,
    SearchMatch,
    TreeEntry,
    check_count,
    check_mode,
    check_path,
    check_paths,
    check_patterns,
    check_text,
    edits_body,
    items,
    read_body,
)
from atoll.sdk._observe_models import WatchEvent
from atoll.sdk._validation import sandbox_path
from atoll.sdk.models import SandboxRef, json_object

CHUNK = 1024 * 1024
OCTET = {"content-type": "application/octet-stream"}
LocalFile: TypeAlias = "str | os.PathLike[str] | IO[bytes]"
_Paths: TypeAlias = "list[str]"


async def _file_chunks(source: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


class AsyncFilesystem:
    """The filesystem of one sandbox; every method is one request."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxRef) -> None:
        self._transport = transport
        self._sandbox = sandbox

    def _path(self, op: str) -> str:
        return sandbox_path(self._sandbox, f"/filesystem/{op}")

    async def _json(self, op: str, body: dict[str, Any], http_timeout: float | None) -> dict[str, Any]:
        response = await self._transport.request("POST", self._path(op), json=body, timeout=http_timeout)
        return json_object(response.content)

    async def _no_content(self, op: str, body: dict[str, Any], http_timeout: float | None) -> None:
        await self._transport.request(
            "POST", self._path(op), json=body, expected_status=204, timeout=http_timeout
        )

    # changes -----------------------------------------------------------------------------------
    async def watch(
        self, path: str, *, recursive: bool = False, http_timeout: float | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Changes below the directory ``path`` (``atoll.sdk._async.observe.watch``)."""
        events = observe.watch(
            self._transport, self._sandbox, path, recursive=recursive, http_timeout=http_timeout
        )
        async for event in events:
            yield event

    # metadata ----------------------------------------------------------------------------------
    async def ls(
        self,
        *,
        path: str,
        recursive: bool = False,
        exclude: Sequence[str] | None = None,
        http_timeout: float | None = None,
    ) -> list[FileInfo]:
        """Entries of a directory (all levels with ``recursive``), sorted by path."""
        body: dict[str, Any] = {"path": check_path("path", path), "recursive": bool(recursive)}
        if exclude is not None:
            body["exclude"] = check_patterns("exclude", exclude)
        data = await self._json("ls", body, http_timeout)
        return [FileInfo.from_dict(item) for item in items(data)]

    async def stat(self, *, path: str, http_timeout: float | None = None) -> FileInfo:
        data = await self._json("stat", {"path": check_path("path", path)}, http_timeout)
        return FileInfo.from_dict(data)

    async def exists(self, *, path: str, http_timeout: float | None = None) -> bool:
        data = await self._json("exists", {"path": check_path("path", path)}, http_timeout)
        return bool(data.get("exists", False))

    async def tree(
        self,
        *,
        path: str,
        max_depth: int | None = None,
        exclude: Sequence[str] | None = None,
        http_timeout: float | None = None,
    ) -> list[TreeEntry]:
        body: dict[str, Any] = {"path": check_path("path", path)}
        if max_depth is not None:
            if check_count("max_depth", max_depth) < 1:
                raise InvalidArgument("max_depth", "must be at least 1")
            body["max_depth"] = max_depth
        if exclude is not None:
            body["exclude"] = check_patterns("exclude", exclude)
        data = await self._json("tree", body, http_timeout)
        return [TreeEntry.from_dict(item) for item in items(data)]

    async def glob(
        self,
        *,
        path: str,
        pattern: str,
        exclude: Sequence[str] | None = None,
        http_timeout: float | None = None,
    ) -> _Paths:
        """Paths under ``path`` whose relative path matches ``pattern`` (``**`` spans directories)."""
        body: dict[str, Any] = {
            "path": check_path("path", path),
            "pattern": check_text("pattern", pattern, allow_empty=False),
        }
        if exclude is not None:
            body["exclude"] = check_patterns("exclude", exclude)
        data = await self._json("glob", body, http_timeout)
        return [str(item) for item in items(data)]

    async def grep(
        self,
        *,
        path: str,
        pattern: str,
        include: str | None = None,
        exclude: Sequence[str] | None = None,
        http_timeout: float | None = None,
    ) -> list[SearchMatch]:
        """Lines matching the regular expression ``pattern`` in text files under ``path``."""
        body: dict[str, Any] = {
            "path": check_path("path", path),
            "pattern": check_text("pattern", pattern, allow_empty=False),
        }
        if include is not None:
            body["include"] = check_text("include", include, allow_empty=False)
        if exclude is not None:
            body["exclude"] = check_patterns("exclude", exclude)
        data = await self._json("grep", body, http_timeout)
        return [SearchMatch.from_dict(item) for item in items(data)]

    # changes -----------------------------------------------------------------------------------
    async def mkdir(
        self,
        *,
        path: str,
        recursive: bool = False,
        permissions: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        body: dict[str, Any] = {"path": check_path("path", path), "recursive": bool(recursive)}
        if permissions is not None:
            body["permissions"] = check_mode("permissions", permissions)
        await self._no_content("mkdir", body, http_timeout)

    async def delete(self, *, path: str, recursive: bool = False, http_timeout: float | None = None) -> None:
        body = {"path": check_path("path", path), "recursive": bool(recursive)}
        await self._no_content("delete", body, http_timeout)

    async def set_permissions(
        self,
        *,
        path: str,
        mode: str | None = None,
        owner: str | None = None,
        group: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        """Change mode (octal string), owner and/or group (names from the sandbox, or numbers)."""
        body: dict[str, Any] = {"path": check_path("path", path)}
        if mode is not None:
            body["mode"] = check_mode("mode", mode)
        if owner is not None:
            body["owner"] = check_text("owner", owner, allow_empty=False)
        if group is not None:
            body["group"] = check_text("group", group, allow_empty=False)
        if len(body) == 1:
            raise InvalidArgument("mode", "set_permissions needs at least one of mode, owner, group")
        await self._no_content("set-permissions", body, http_timeout)

    async def move(
        self, *, src_path: str, dst_path: str, overwrite: bool = False, http_timeout: float | None = None
    ) -> None:
        body = {
            "src_path": check_path("src_path", src_path),
            "dst_path": check_path("dst_path", dst_path),
            "overwrite": bool(overwrite),
        }
        await self._no_content("move", body, http_timeout)

    async def copy(
        self,
        *,
        src_path: str,
        dst_path: str,
        recursive: bool = False,
        overwrite: bool | None = None,
        http_timeout: float | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "src_path": check_path("src_path", src_path),
            "dst_path": check_path("dst_path", dst_path),
            "recursive": bool(recursive),
        }
        if overwrite is not None:
            body["overwrite"] = bool(overwrite)
        await self._no_content("copy", body, http_timeout)

    async def edit_file(
        self, *, path: str, edits: Sequence[EditSpec], http_timeout: float | None = None
    ) -> EditFileResult:
        """Apply find-and-replace edits in order, all or none; returns a unified diff."""
        body = {"path": check_path("path", path), "edits": edits_body(edits)}
        return EditFileResult.from_dict(await self._json("edit-file", body, http_timeout))

    async def edit_files(
        self, *, paths: Sequence[str], find: str, replace: str = "", http_timeout: float | None = None
    ) -> list[EditResult]:
        body = {
            "files": check_paths("paths", paths),
            "find": check_text("find", find, allow_empty=False),
            "replace": check_text("replace", replace),
        }
        data = await self._json("edit-files", body, http_timeout)
        return [EditResult.from_dict(item) for item in items(data)]

    # contents ----------------------------------------------------------------------------------
    async def write_bytes(
        self,
        *,
        path: str,
        content: bytes,
        permissions: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        """Write ``content`` to ``path`` (missing parent directories are created)."""
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidArgument("content", f"must be bytes, got {type(content).__name__}")
        await self._transport.request(
            "POST",
            self._path("write-file"),
            params=self._write_params(path, permissions),
            content=bytes(content),
            headers=OCTET,
            expected_status=204,
            timeout=http_timeout,
        )

    async def write_file(
        self,
        *,
        path: str,
        content: str,
        encoding: str = "utf-8",
        permissions: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        data = check_text("content", content).encode(encoding)
        await self.write_bytes(path=path, content=data, permissions=permissions, http_timeout=http_timeout)

    @staticmethod
    def _write_params(path: str, permissions: str | None) -> dict[str, str]:
        params = {"path": check_path("path", path)}
        if permissions is not None:
            params["permissions"] = check_mode("permissions", permissions)
        return params

    async def write_files_bytes(
        self, *, files: Mapping[str, bytes], http_timeout: float | None = None
    ) -> None:
        """Write several files in one multipart request (each part's name is its path)."""
        if not isinstance(files, Mapping):
            raise InvalidArgument("files", "must be a mapping of path to bytes")
        boundary = multipart.new_boundary()
        chunks: list[bytes] = []
        for path, data in files.items():
            if not isinstance(data, (bytes, bytearray)):
                raise InvalidArgument(f"files[{path!r}]", f"must be bytes, got {type(data).__name__}")
            chunks += [
                f"--{boundary}\r\n".encode(),
                multipart.part_header(check_path("files", path), filename="upload"),
            ]
            chunks += [bytes(data), b"\r\n"]
        chunks.append(f"--{boundary}--\r\n".encode())
        await self._transport.request(
            "POST",
            self._path("write-files"),
            content=b"".join(chunks),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            expected_status=204,
            timeout=http_timeout,
        )

    async def write_files(
        self, *, files: Mapping[str, str], encoding: str = "utf-8", http_timeout: float | None = None
    ) -> None:
        encoded = {p: check_text(f"files[{p!r}]", c).encode(encoding) for p, c in files.items()}
        await self.write_files_bytes(files=encoded, http_timeout=http_timeout)

    async def read_bytes(
        self,
        *,
        path: str,
        offset: int | None = None,
        limit: int | None = None,
        head: int | None = None,
        tail: int | None = None,
        http_timeout: float | None = None,
    ) -> bytes:
        """A file's bytes; ``offset``/``limit`` pick bytes, then ``head``/``tail`` keep N lines."""
        body = read_body(path=path, offset=offset, limit=limit, head=head, tail=tail)
        response = await self._transport.request(
            "POST", self._path("read-file"), json=body, timeout=http_timeout
        )
        return response.content

    async def read_file(
        self,
        *,
        path: str,
        offset: int | None = None,
        limit: int | None = None,
        head: int | None = None,
        tail: int | None = None,
        encoding: str = "utf-8",
        http_timeout: float | None = None,
    ) -> str:
        data = await self.read_bytes(
            path=path, offset=offset, limit=limit, head=head, tail=tail, http_timeout=http_timeout
        )
        return data.decode(encoding)

    async def read_files_bytes(
        self, *, paths: Sequence[str], http_timeout: float | None = None
    ) -> dict[str, bytes]:
        """Several files in one request, keyed by the paths as given."""
        body = {"paths": check_paths("paths", paths)}
        response = await self._transport.request(
            "POST", self._path("read-files"), json=body, timeout=http_timeout
        )
        try:
            return multipart.parse(response.headers.get("content-type", ""), response.content)
        except multipart.MultipartError as exc:
            raise MalformedResponseError(f"read-files answered with a broken multipart body: {exc}") from exc

    async def read_files(
        self, *, paths: Sequence[str], encoding: str = "utf-8", http_timeout: float | None = None
    ) -> dict[str, str]:
        found = await self.read_files_bytes(paths=paths, http_timeout=http_timeout)
        return {path: data.decode(encoding) for path, data in found.items()}

    # streaming ---------------------------------------------------------------------------------
    async def upload(
        self,
        *,
        path: str,
        source: LocalFile,
        permissions: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        """Stream a local file (a path, or a binary file object) to ``path`` in the sandbox."""
        params = self._write_params(path, permissions)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                await self._upload(params, f, http_timeout)
        else:
            await self._upload(params, source, http_timeout)

    async def _upload(self, params: dict[str, str], source: IO[bytes], http_timeout: float | None) -> None:
        async with self._transport.stream(
            "POST",
            self._path("write-file"),
            params=params,
            content=_file_chunks(source),
            headers=OCTET,
            expected_status=204,
            timeout=http_timeout,
        ):
            pass

    async def download(
        self,
        *,
        path: str,
        destination: LocalFile,
        offset: int | None = None,
        limit: int | None = None,
        http_timeout: float | None = None,
    ) -> int:
        """Stream ``path`` into a local file (a path, or a binary file object); returns the size."""
        body = read_body(path=path, offset=offset, limit=limit, head=None, tail=None)
        if isinstance(destination, (str, os.PathLike)):
            with open(destination, "wb") as f:
                return await self._download(body, f, http_timeout)
        return await self._download(body, destination, http_timeout)

    async def _download(self, body: dict[str, Any], sink: IO[bytes], http_timeout: float | None) -> int:
        written = 0
        async with self._transport.stream(
            "POST", self._path("read-file"), json=body, timeout=http_timeout
        ) as response:
            async for chunk in response.aiter_bytes(CHUNK):
                sink.write(chunk)
                written += len(chunk)
        return written
