"""Opening paths of a sandbox's root filesystem from the host without ever leaving it.

The server works on the sandbox's overlay root as mounted on the host (``<sandbox>/rootfs``).
Every path is resolved by the kernel relative to a directory fd of that root with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)``: ``..`` stops at the root,
absolute symlinks are read as the sandbox sees them, ``/proc/*/root``-style magic links are
refused and no other mount can be entered. Resolution happens in one syscall, so a directory
swapped for a link by a process inside the sandbox can at worst redirect us to another place in
the same root, never outside it. Everything after that works on the fds it returned: the last
path component is handled with ``*at`` calls (``mkdirat``, ``unlinkat``, ``renameat2`` ...) on a
pinned parent directory fd, and never followed unless through ``openat2`` again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import posixpath
import stat
from collections.abc import Iterator

from atoll._exceptions import (
    FileAccessDenied,
    FileConflict,
    FileFailure,
    FileNotFound,
    FileRequestInvalid,
    FileStorageFull,
    FilesystemNotMounted,
)

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall table unification)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
RENAME_NOREPLACE = 0x1
PATH_MAX = 4096
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Atoll's helper layer: the API may read it, never change it (exec relies on its binaries)
PROTECTED = "/.atoll"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    return open_beneath(dirfd, path, flags, mode, resolve=RESOLVE)


def open_beneath(dirfd: int, path: str, flags: int, mode: int = 0, *, resolve: int) -> int:
    """``openat2(dirfd, path)`` with the ``RESOLVE_*`` flags ``resolve``."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    raw = path.encode("utf-8", "surrogateescape")
    for _ in range(16):  # EAGAIN: a concurrent rename raced a ".." walk; the kernel asks to retry
        fd = libc.syscall(SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "path resolution kept racing with renames", path)


_KIND: dict[int, type[FileFailure]] = {
    errno.ENOENT: FileNotFound,
    errno.ENOTDIR: FileNotFound,
    errno.EEXIST: FileConflict,
    errno.ENOTEMPTY: FileConflict,
    errno.ETXTBSY: FileConflict,
    errno.EBUSY: FileConflict,
    errno.EACCES: FileAccessDenied,
    errno.EPERM: FileAccessDenied,
    errno.EXDEV: FileAccessDenied,
    errno.EROFS: FileAccessDenied,
    errno.EISDIR: FileRequestInvalid,
    errno.ELOOP: FileRequestInvalid,
    errno.EINVAL: FileRequestInvalid,
    errno.ENAMETOOLONG: FileRequestInvalid,
    errno.ENXIO: FileRequestInvalid,
}
_WHAT: dict[int, str] = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "no such file or directory (a component is not a directory)",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.EXDEV: "outside the sandbox filesystem",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENXIO: "not a regular file",
}


def file_error(exc: OSError, path: str) -> FileFailure:
    """The typed failure for an OSError raised while working on ``path`` (a sandbox path), by its
    errno (``server/errors.py`` answers each type)."""
    code = exc.errno or 0
    what = _WHAT.get(code) or os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return FileStorageFull(f"{path}: {what}", errno=code)
    return _KIND.get(code, FileFailure)(f"{path}: {what}", errno=code)


@contextlib.contextmanager
def mapped(path: str) -> Iterator[None]:
    """Turn an OSError inside the block into the typed failure it means (``file_error``)."""
    try:
        yield
    except OSError as exc:
        raise file_error(exc, path) from None


def normalize(path: object, *, base: str = "/") -> str:
    """An absolute, lexically clean sandbox path. Relative paths start at ``base``; a ``..``
    that would climb above ``/`` is refused (403) rather than silently clamped."""
    if not isinstance(path, str) or not path:
        raise FileRequestInvalid("path must be a non-empty string")
    if "\x00" in path:
        raise FileRequestInvalid("path must not contain NUL bytes")
    try:  # \udc80-\udcff stand for the bytes of a non-UTF-8 name; other surrogates are nothing
        size = len(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise FileRequestInvalid("path must be valid Unicode text (no lone surrogates)") from None
    if size > PATH_MAX:
        raise FileRequestInvalid("path is too long")
    full = path if path.startswith("/") else posixpath.join(base, path)
    parts: list[str] = []
    for part in full.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise FileAccessDenied(f"{path}: escapes the sandbox root")
            parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """(parent, name) of a normalized path; the root has no name."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def _relative(path: str) -> str:
    return path.lstrip("/") or "."


def check_writable(path: str) -> None:
    """Refuse changes to the root itself and to Atoll's helper layer."""
    if path == "/":
        raise FileAccessDenied("/: the sandbox root cannot be replaced, moved or deleted")
    if path == PROTECTED or path.startswith(PROTECTED + "/"):
        raise FileAccessDenied(f"{path}: belongs to Atoll's runtime helpers and is read-only")


class Root:
    """A directory fd of one sandbox's root filesystem; open with ``Root.open(host_path)``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, host_path: str, *, require_mount: bool = True) -> Root:
        """``require_mount``: the directory must be a mount point (a running sandbox's overlay)."""
        fd = os.open(host_path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            parent = os.stat(posixpath.dirname(host_path.rstrip("/")))
            if require_mount and os.fstat(fd).st_dev == parent.st_dev:
                # not a mount point: the sandbox's root filesystem is not mounted (stopped sandbox)
                raise FilesystemNotMounted("the sandbox's filesystem is not mounted; start the sandbox first")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # a safety net for a root handed to a streaming response that was never sent
        self.close()

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # resolution ----------------------------------------------------------------------------
    def open_path(self, path: str, flags: int, mode: int = 0) -> int:
        """``openat2`` of a normalized sandbox path, following symlinks inside the root only."""
        return _openat2(self.fd, _relative(path), flags, mode)

    def open_dir(self, path: str) -> int:
        """An ``O_PATH`` fd of the directory at ``path`` (symlinks followed inside the root)."""
        return self.open_path(path, os.O_PATH | os.O_DIRECTORY)

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """(fd of the parent directory, last component) of a normalized non-root path."""
        parent, name = split(path)
        if not name:
            raise FileAccessDenied("/: not allowed on the sandbox root")
        fd = self.open_dir(parent)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def lstat(self, path: str) -> os.stat_result:
        if path == "/":
            return os.fstat(self.fd)
        with self.parent(path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def stat(self, path: str) -> os.stat_result:
        """stat following symlinks (inside the root)."""
        fd = self.open_path(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        try:
            self.lstat(path)
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            return False
        return True

    def readlink(self, path: str) -> str:
        with self.parent(path) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def host_path_of(self, fd: int) -> str:
        """The sandbox path an fd of this root refers to now (via our own /proc/self/fd)."""
        target = os.readlink(f"/proc/self/fd/{fd}")
        root = os.readlink(f"/proc/self/fd/{self.fd}")
        if target == root:
            return "/"
        if not target.startswith(root.rstrip("/") + "/"):
            raise FileAccessDenied("path resolved outside the sandbox root")
        return target[len(root.rstrip("/")) :]

    # opening files -------------------------------------------------------------------------
    def open_regular(self, path: str, flags: int, mode: int = 0o644) -> int:
        """Open a regular file; FIFOs, sockets and devices are refused without blocking."""
        fd = self.open_path(path, flags | os.O_NONBLOCK | os.O_NOCTTY, mode)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FileRequestInvalid(f"{path}: is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise FileRequestInvalid(f"{path}: not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def makedirs(self, path: str, mode: int = 0o755) -> list[str]:
        """``mkdir -p`` through the root; returns the directories it created."""
        created: list[str] = []
        parts = [p for p in path.split("/") if p]
        for index in range(len(parts)):
            current = "/" + "/".join(parts[: index + 1])
            try:
                os.close(self.open_dir(current))
                continue
            except FileNotFoundError:
                pass
            with self.parent(current) as (fd, name):
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    os.close(self.open_dir(current))  # raced with someone else: fine if a dir
                    continue
                created.append(current)
        return created

    def rename(self, src: str, dst: str, *, overwrite: bool) -> None:
        with self.parent(src) as (src_fd, src_name), self.parent(dst) as (dst_fd, dst_name):
            flags = 0 if overwrite else RENAME_NOREPLACE
            rc = libc.renameat2(
                src_fd,
                src_name.encode("utf-8", "surrogateescape"),
                dst_fd,
                dst_name.encode("utf-8", "surrogateescape"),
                flags,
            )
            if rc != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), src)


def chmod_fd(fd: int, mode: int) -> None:
    """chmod through an fd, including ``O_PATH`` ones (via our own /proc/self/fd entry)."""
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        os.chmod(f"/proc/self/fd/{fd}", mode)


# layers: the host writing into a sandbox's upper dir (or reading a template) before it boots --
def read_in_layer(layer: str, path: str) -> bytes | None:
    """A regular file of a root filesystem layer (a template's rootfs, a sandbox's upper dir),
    symlinks resolved inside that layer only; None when there is no such regular file."""
    try:
        with Root.open(layer, require_mount=False) as root:
            fd = root.open_regular(normalize(path), os.O_RDONLY)
    except (OSError, FileFailure):
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def replace_in_layer(layer: str, path: str, data: bytes, mode: int = 0o644) -> None:
    """Put a regular file at ``path`` in a layer the sandbox writes to. Whatever is there (a
    symlink the sandbox planted to a host path included) is replaced, never followed."""
    path = normalize(path)
    with Root.open(layer, require_mount=False) as root:
        root.makedirs(split(path)[0])
        with root.parent(path) as (dir_fd, name):
            temporary = f".{name}.atoll-new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=dir_fd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(temporary, flags, mode, dir_fd=dir_fd), "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
