"""Replacing a file or a tree in one step, so that nothing is ever seen (or left) half-made.

A new file is written beside the one it replaces and renamed over it when complete; a copy is
made under a fresh name and swapped into place (``RENAME_EXCHANGE``); a move over a directory
swaps too. A client that gives up, an error or a killed server leaves the old contents whole.
All of it works on directory fds of the sandbox root (``confined.Root``) with names the sandbox
cannot redirect, as ``confined`` explains.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import secrets
import stat

from atoll._exceptions import FileConflict, FileRequestInvalid
from atoll.runtime.confined import DIR_FLAGS, RENAME_NOREPLACE, Root, check_writable, libc, split
from atoll.runtime.trees import COPY_MAX_ENTRIES, MAX_DEPTH, remove_tree

COPY_CHUNK = 8 * 1024 * 1024
RENAME_EXCHANGE = 0x2
_LINK_HOPS = 40


class NewVersion:
    """The next contents of a regular file, written beside it and renamed over it on ``commit``:
    readers (and a crash, or a client giving up) see the old file whole or the new one whole.

    The new inode is an ``O_TMPFILE`` in the file's own directory, so a server killed mid-write
    leaves nothing behind; it is linked under a fresh name and renamed over the file only once
    complete. A file it replaces passes on its owner and mode. Everything is relative to the
    directory's fd, opened inside the sandbox root, with names the sandbox cannot redirect."""

    def __init__(self, dir_fd: int, name: str, fd: int, temporary: str | None) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.fd = fd
        self._temporary = temporary  # a named temporary file (no O_TMPFILE on this filesystem)

    def commit(self) -> None:
        try:
            temporary = self._temporary
            if temporary is None:
                temporary = _link_fresh(self.fd, self.dir_fd)
            self._temporary = temporary
            os.rename(temporary, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self._temporary = None
        finally:
            self.abort()

    def __del__(self) -> None:
        # a safety net for a version whose request ended without a commit or an abort
        if self.fd >= 0 or self.dir_fd >= 0:
            self.abort()

    def abort(self) -> None:
        """Drop the new version (after a commit: only release the fds)."""
        if self._temporary is not None:
            try:
                os.unlink(self._temporary, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            self._temporary = None
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


def _fresh_name() -> str:
    return f".atoll-new-{secrets.token_hex(6)}"


def _link_fresh(fd: int, dir_fd: int) -> str:
    """Give an O_TMPFILE inode a fresh name in its directory (never an existing one)."""
    for _ in range(8):
        name = _fresh_name()
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            continue
        return name
    raise OSError(errno.EEXIST, "no fresh name for a new file")


def _target(root: Root, path: str) -> tuple[str, os.stat_result | None]:
    """The sandbox path a write to ``path`` lands on (symlinks followed inside the root, as an
    open would) and the file there now, if any."""
    for _ in range(_LINK_HOPS):
        try:
            fd = root.open_path(path, os.O_PATH)
        except FileNotFoundError:
            try:
                link = root.lstat(path)
            except FileNotFoundError:
                return path, None
            if not stat.S_ISLNK(link.st_mode):
                return path, None
            target = root.readlink(path)  # a dangling link: the write creates its target
            path = posixpath.normpath(posixpath.join(split(path)[0], target))
            path = "/" + path.lstrip("/")
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FileRequestInvalid(f"{path}: is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise FileRequestInvalid(f"{path}: not a regular file")
            if info.st_nlink == 0:  # removed since the open: the write creates it again
                return path, None
            return root.host_path_of(fd), info
        finally:
            os.close(fd)
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def new_version(root: Root, path: str, *, mode: int | None = None) -> NewVersion:
    """Start replacing (or creating) the regular file at ``path``; see ``NewVersion``."""
    real, old = _target(root, path)
    check_writable(real)
    parent, name = split(real)
    dir_fd = root.open_dir(parent)
    try:
        temporary = None
        try:
            fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            temporary = _fresh_name()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
        try:
            if old is not None:
                os.fchown(fd, old.st_uid, old.st_gid)  # before the mode: chown clears set-id bits
            os.fchmod(fd, mode if mode is not None else stat.S_IMODE(old.st_mode) if old else 0o644)
        except BaseException:
            os.close(fd)
            if temporary is not None:
                os.unlink(temporary, dir_fd=dir_fd)
            raise
    except BaseException:
        os.close(dir_fd)
        raise
    return NewVersion(dir_fd, name, fd, temporary)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _exchange(root: Root, a: str, b: str) -> bool:
    """Swap two names atomically (``RENAME_EXCHANGE``); False where the filesystem cannot."""
    with root.parent(a) as (a_fd, a_name), root.parent(b) as (b_fd, b_name):
        return _exchange_at(a_fd, a_name, b_fd, b_name)


def _exchange_at(a_fd: int, a_name: str, b_fd: int, b_name: str) -> bool:
    rc = libc.renameat2(
        a_fd, a_name.encode("utf-8", "surrogateescape"), b_fd, b_name.encode("utf-8", "surrogateescape"),
        RENAME_EXCHANGE,
    )  # fmt: skip
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EXDEV, errno.EOPNOTSUPP) or (err == errno.EINVAL and a_fd == b_fd):
        return False
    raise OSError(err, os.strerror(err), a_name)


def _remove_existing(root: Root, path: str) -> None:
    with root.parent(path) as (fd, name):
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        remove_tree(fd, name)


def move(root: Root, src: str, dst: str, *, overwrite: bool) -> None:
    check_writable(src)
    check_writable(dst)
    src_info = root.lstat(src)
    try:
        if overwrite and src != dst:
            try:
                dst_info = root.lstat(dst)
            except FileNotFoundError:
                dst_info = None
            # rename(2) replaces a file or an empty directory of the same kind; anything else is
            # swapped with the source in one step, and what was at dst is then removed from src
            if dst_info is not None and (
                stat.S_ISDIR(dst_info.st_mode) != stat.S_ISDIR(src_info.st_mode)
                or (stat.S_ISDIR(dst_info.st_mode) and any(True for _ in _entries(root, dst)))
            ):
                if _exchange(root, src, dst):
                    _remove_existing(root, src)
                    return
                _remove_existing(root, dst)
        root.rename(src, dst, overwrite=overwrite)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise FileRequestInvalid(f"cannot move {src} into itself ({dst})") from None
        if exc.errno == errno.EEXIST:
            raise FileConflict(f"{dst}: already exists (pass overwrite to replace it)") from None
        raise


def _entries(root: Root, path: str) -> list[str]:
    fd = root.open_path(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def copy(root: Root, src: str, dst: str, *, recursive: bool, overwrite: bool) -> None:
    """Copy a file or (``recursive``) a tree. The copy is made under a fresh name beside ``dst``
    and put in place in one rename (swapped with what was there, which is then removed): ``dst``
    is the old or the new whole, and a copy that fails leaves nothing of itself behind."""
    check_writable(dst)
    src_fd = root.open_path(src, os.O_PATH)
    try:
        src_stat = os.fstat(src_fd)
        if stat.S_ISDIR(src_stat.st_mode) and not recursive:
            raise FileRequestInvalid(f"{src}: is a directory (pass recursive to copy it)")
        src_real = root.host_path_of(src_fd)
    finally:
        os.close(src_fd)
    with root.parent(dst) as (dst_parent, _):
        dst_real = root.host_path_of(dst_parent).rstrip("/") + "/" + split(dst)[1]
    if dst_real == src_real or dst_real.startswith(src_real.rstrip("/") + "/"):
        raise FileRequestInvalid(f"cannot copy {src} into itself ({dst})")
    exists = root.exists(dst)
    if exists and not overwrite:
        raise FileConflict(f"{dst}: already exists (pass overwrite to replace it)")
    with root.parent(dst) as (dst_dir, name):
        fresh = _fresh_name()
        try:
            if stat.S_ISDIR(src_stat.st_mode):
                src_dir = root.open_path(src, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    _copy_tree(src_dir, dst_dir, fresh, stat.S_IMODE(src_stat.st_mode), src)
                finally:
                    os.close(src_dir)
            else:
                fd = root.open_regular(src, os.O_RDONLY)
                try:
                    _copy_file(fd, dst_dir, fresh, stat.S_IMODE(src_stat.st_mode))
                finally:
                    os.close(fd)
            _install(dst_dir, fresh, name, replace=exists)
        except BaseException:
            try:
                remove_tree(dst_dir, fresh)
            except FileNotFoundError:
                pass
            raise


def _install(dir_fd: int, fresh: str, name: str, *, replace: bool) -> None:
    """Put ``fresh`` in place as ``name``; what was there goes, after the swap."""
    if replace:
        try:
            if _exchange_at(dir_fd, fresh, dir_fd, name):
                remove_tree(dir_fd, fresh)
                return
        except FileNotFoundError:
            pass  # removed meanwhile: a plain rename below
        info = os.stat(fresh, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            try:
                remove_tree(dir_fd, name)
            except FileNotFoundError:
                pass
        os.rename(fresh, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    rc = libc.renameat2(
        dir_fd, fresh.encode(), dir_fd, name.encode("utf-8", "surrogateescape"), RENAME_NOREPLACE
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def _copy_file(src_fd: int, dst_dir: int, name: str, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(name, flags, 0o600, dir_fd=dst_dir)
    try:
        while True:
            try:
                copied = os.copy_file_range(src_fd, out, COPY_CHUNK)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                chunk = os.read(src_fd, COPY_CHUNK)
                if chunk:
                    write_all(out, chunk)
                copied = len(chunk)
            if copied == 0:
                break
        os.fchmod(out, mode)
    finally:
        os.close(out)


def _copy_tree(src_dir: int, dst_parent: int, name: str, mode: int, src: str) -> None:
    """Copy the directory open as ``src_dir`` to ``dst_parent/name``, all by fds: symlinks are
    copied as links, FIFOs, sockets and devices are skipped. Iterative, with a depth and an
    entry-count limit (400): one fd pair is held per level being copied."""
    os.mkdir(name, 0o700, dir_fd=dst_parent)
    dst_dir = os.open(name, DIR_FLAGS, dir_fd=dst_parent)
    # each level: (source fd, copy fd, the copy's final mode, entries left to copy)
    stack: list[tuple[int, int, int, list[str]]] = [(os.dup(src_dir), dst_dir, mode, os.listdir(src_dir))]
    count = 0
    try:
        while stack:
            s_fd, d_fd, level_mode, pending = stack[-1]
            if not pending:
                stack.pop()
                os.fchmod(d_fd, level_mode)
                os.close(s_fd)
                os.close(d_fd)
                continue
            entry = pending.pop()
            count += 1
            if count > COPY_MAX_ENTRIES:
                raise FileRequestInvalid(
                    f"{src}: more than {COPY_MAX_ENTRIES} entries (the limit of one copy); nothing was copied"
                )
            try:
                info = os.stat(entry, dir_fd=s_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(entry, dir_fd=s_fd), entry, dir_fd=d_fd)
            elif stat.S_ISDIR(info.st_mode):
                if len(stack) >= MAX_DEPTH:
                    raise FileRequestInvalid(
                        f"{src}: the tree is deeper than {MAX_DEPTH} levels (the depth limit of a copy); "
                        "nothing was copied"
                    )
                child = os.open(entry, DIR_FLAGS, dir_fd=s_fd)
                try:
                    os.mkdir(entry, 0o700, dir_fd=d_fd)
                    copy_fd = os.open(entry, DIR_FLAGS, dir_fd=d_fd)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, copy_fd, stat.S_IMODE(info.st_mode), []))
                stack[-1][3].extend(os.listdir(child))
            elif stat.S_ISREG(info.st_mode):
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(entry, flags, dir_fd=s_fd)
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):  # still a file after the open
                        _copy_file(fd, d_fd, entry, stat.S_IMODE(info.st_mode))
                finally:
                    os.close(fd)
    finally:
        for s_fd, d_fd, _, _ in stack:
            os.close(s_fd)
            os.close(d_fd)
