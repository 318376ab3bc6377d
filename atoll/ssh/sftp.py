"""SFTP (and so ``scp``, which speaks SFTP since OpenSSH 9) for the SSH gateway: asyncssh's SFTP
server over the sandbox's root filesystem as the host sees it, every path resolved through
``atoll.runtime.confined.Root`` (``openat2`` beneath the root: a symlink inside the sandbox can
never lead to a host file). Relative paths start at the template's working directory. In a
user namespace, files are created as the sandbox's mapped root (as the filesystem API does,
``atoll.runtime.idmap.fs_owner``) and owners are shown as the sandbox sees them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncssh

from atoll._exceptions import AtollError, FileAccessDenied, FileNotFound, NotFoundError, PermissionDeniedError
from atoll.runtime import idmap
from atoll.runtime.confined import Root, check_writable, normalize

if TYPE_CHECKING:
    from atoll.ssh.gateway import Gateway

MAX_READ_BYTES = 1 << 20  # one read answers at most this much (clients ask for 32-256 KiB)


def _text(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def _attrs(info: os.stat_result, base: int | None = None) -> asyncssh.SFTPAttrs:
    """``info`` for the client; ``base``: the sandbox's mapped root, whose range shows as 0..65535."""
    attrs = asyncssh.SFTPAttrs.from_local(info)
    if base is not None:
        attrs.uid, attrs.gid = (
            i - base if base <= i < base + idmap.MAPPED_IDS else i for i in (info.st_uid, info.st_gid)
        )
    return attrs


def _as_owner(base: int, operation: Any, root: Root, path: str) -> Any:
    with idmap.fs_owner(base, base):  # per thread: called in a worker thread
        return operation(root, path)


def _sftp_error(exc: AtollError) -> asyncssh.SFTPError:
    if isinstance(exc, (NotFoundError, FileNotFound)):
        return asyncssh.SFTPNoSuchFile(str(exc))
    if isinstance(exc, (PermissionDeniedError, FileAccessDenied)):
        return asyncssh.SFTPPermissionDenied(str(exc))
    return asyncssh.SFTPFailure(str(exc))


def open_flags(pflags: int) -> int:
    """SFTP open flags (``FXF_*``) as ``os.open`` flags."""
    readable, writable = bool(pflags & asyncssh.FXF_READ), bool(pflags & asyncssh.FXF_WRITE)
    flags = os.O_RDWR if readable and writable else os.O_WRONLY if writable else os.O_RDONLY
    for bit, extra in (
        (asyncssh.FXF_APPEND, os.O_APPEND),
        (asyncssh.FXF_CREAT, os.O_CREAT),
        (asyncssh.FXF_TRUNC, os.O_TRUNC),
        (asyncssh.FXF_EXCL, os.O_EXCL),
    ):
        if pflags & bit:
            flags |= extra
    return flags | os.O_CLOEXEC


class SandboxSFTP(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], gateway: Gateway) -> None:
        super().__init__(chan)
        self.gateway = gateway
        owner = chan.get_connection().get_owner()
        self.access = getattr(owner, "access", None)
        self._touch = getattr(owner, "touch", lambda: None)  # the gateway's idle deadline
        self.workdir = "/"
        self.base: int | None = None  # the sandbox's mapped root, when it runs in a user namespace

    async def _root(self) -> Root:
        if self.access is None:
            raise asyncssh.SFTPPermissionDenied("not logged in")
        self._touch()
        try:
            row = await self.gateway.running(self.access)
            self.workdir = self.gateway.manager.template_for(row).workdir or "/"
            ranges = getattr(self.gateway.manager.host.backend_for(row), "userns", None)
            id_range = ranges.of(row.id) if ranges is not None else None
            self.base = id_range.base if id_range is not None else None
            rootfs = self.gateway.manager.host.sandbox_dir(row.id) / "rootfs"
            return Root.open(str(rootfs))
        except AtollError as exc:
            raise _sftp_error(exc) from None

    def _path(self, path: bytes) -> str:
        try:
            return normalize(_text(path) or ".", base=self.workdir)
        except (AtollError, ValueError) as exc:
            raise asyncssh.SFTPBadMessage(str(exc)) from None

    async def _on_root(self, path: bytes, operation: Any) -> Any:
        with await self._root() as root:
            try:
                if self.base is None:
                    return operation(root, self._path(path))
                # through the idmapped layers only an id of the sandbox's range may create files
                return await asyncio.to_thread(_as_owner, self.base, operation, root, self._path(path))
            except AtollError as exc:
                raise _sftp_error(exc) from None

    # names and attributes --------------------------------------------------------------------
    async def realpath(self, path: bytes) -> bytes:
        with await self._root():  # also learns the workdir relative paths start at
            return self._path(path).encode("utf-8", "surrogateescape")

    async def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return _attrs(await self._on_root(path, lambda root, p: root.stat(p)), self.base)

    async def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        return _attrs(await self._on_root(path, lambda root, p: root.lstat(p)), self.base)

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        def entries(root: Root, directory: str) -> list[asyncssh.SFTPName]:
            fd = root.open_path(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                found = [asyncssh.SFTPName(b".", attrs=_attrs(os.fstat(fd), self.base))]
                for name in os.listdir(fd):
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    found.append(
                        asyncssh.SFTPName(
                            name.encode("utf-8", "surrogateescape"), attrs=_attrs(info, self.base)
                        )
                    )
                return found
            finally:
                os.close(fd)

        for name in await self._on_root(path, entries):
            yield name

    async def readlink(self, path: bytes) -> bytes:
        target: str = await self._on_root(path, lambda root, p: root.readlink(p))
        return target.encode("utf-8", "surrogateescape")

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        def change(root: Root, p: str) -> None:
            check_writable(p)
            fd = root.open_path(p, os.O_PATH)
            try:
                _apply(fd, attrs, by_path=True)
            finally:
                os.close(fd)

        await self._on_root(path, change)

    # files -----------------------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> int:
        flags = open_flags(pflags)
        mode = attrs.permissions if attrs.permissions is not None else 0o644

        def opened(root: Root, p: str) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
                check_writable(p)
            return root.open_regular(p, flags, mode & 0o7777)

        fd: int = await self._on_root(path, opened)
        return fd

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, int)
        self._touch()
        return os.pread(file_obj, min(size, MAX_READ_BYTES), offset)

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, int)
        self._touch()
        written = 0
        while written < len(data):
            written += os.pwrite(file_obj, data[written:], offset + written)
        return written

    def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, int)
        os.close(file_obj)

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        assert isinstance(file_obj, int)
        return _attrs(os.fstat(file_obj), self.base)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        assert isinstance(file_obj, int)
        _apply(file_obj, attrs, by_path=False)

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, int)
        os.fsync(file_obj)

    # changes ---------------------------------------------------------------------------------
    async def remove(self, path: bytes) -> None:
        def unlink(root: Root, p: str) -> None:
            check_writable(p)
            with root.parent(p) as (fd, name):
                if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise IsADirectoryError(p)
                os.unlink(name, dir_fd=fd)

        await self._on_root(path, unlink)

    async def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        mode = attrs.permissions if attrs.permissions is not None else 0o755

        def make(root: Root, p: str) -> None:
            check_writable(p)
            with root.parent(p) as (fd, name):
                os.mkdir(name, mode & 0o7777, dir_fd=fd)

        await self._on_root(path, make)

    async def rmdir(self, path: bytes) -> None:
        def remove(root: Root, p: str) -> None:
            check_writable(p)
            with root.parent(p) as (fd, name):
                os.rmdir(name, dir_fd=fd)

        await self._on_root(path, remove)

    async def _rename(self, old: bytes, new: bytes, *, overwrite: bool) -> None:
        target = self._path(new)

        def move(root: Root, p: str) -> None:
            check_writable(p)
            check_writable(target)
            root.rename(p, target, overwrite=overwrite)

        await self._on_root(old, move)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=False)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, overwrite=True)

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        target = _text(oldpath)  # stored as given: it is resolved inside the sandbox

        def make(root: Root, p: str) -> None:
            check_writable(p)
            with root.parent(p) as (fd, name):
                os.symlink(target, name, dir_fd=fd)

        await self._on_root(newpath, make)

    def exit(self) -> None:
        # OpenSSH's scp takes a session without an exit status for a failure (ssh exits 255)
        with contextlib.suppress(Exception):
            self.channel.exit(0)

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPOpUnsupported("hard links are not supported")

    def statvfs(self, path: bytes) -> os.statvfs_result:
        raise asyncssh.SFTPOpUnsupported("statvfs is not supported")


def _apply(fd: int, attrs: asyncssh.SFTPAttrs, *, by_path: bool) -> None:
    """Permissions and times (what ``scp -p`` and ``sftp put -p`` set); owners stay."""
    target: Any = f"/proc/self/fd/{fd}" if by_path else fd
    if attrs.permissions is not None and not stat.S_ISLNK(os.fstat(fd).st_mode):
        os.chmod(target, attrs.permissions & 0o7777)
    if attrs.atime is not None and attrs.mtime is not None:
        os.utime(target, (attrs.atime, attrs.mtime))
    if attrs.size is not None and not by_path:
        os.ftruncate(fd, attrs.size)
