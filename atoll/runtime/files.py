"""The filesystem operations of the API, on one sandbox's root (``confined.Root``).

Every function here is synchronous and blocking; the server runs them in a worker thread. Paths
are normalized sandbox paths (``confined.normalize``); OSErrors are raised as they come and
mapped to API errors by the caller (``confined.mapped``). Names of owners and groups come from
the sandbox's own ``/etc/passwd`` and ``/etc/group``, never the host's.
"""

from __future__ import annotations

import difflib
import errno
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from atoll._exceptions import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError
from atoll.runtime.confined import Root, api_error, check_writable, chmod_fd, split

MODE_RE = re.compile(r"^[0-7]{1,4}$")
ACCOUNT_FILE_MAX = 4 * 1024 * 1024
EDIT_MAX_BYTES = 10 * 1024 * 1024
COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    is_dir: bool
    size: int
    mode: str
    mtime: int
    owner: str
    group: str
    is_symlink: bool
    link_target: str | None = None

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if self.link_target is None:
            data.pop("link_target")
        return data


def parse_mode(value: str, field: str = "mode") -> int:
    """``"755"`` / ``"0644"`` / ``"4755"`` to an int; anything else is a 400."""
    text = value.strip()
    if not MODE_RE.match(text):
        raise BadRequestError(
            f"invalid {field}", errors=[{"field": field, "error": "must be an octal mode like '755'"}]
        )
    return int(text, 8)


def mode_string(st_mode: int) -> str:
    return format(stat.S_IMODE(st_mode), "03o")


class Accounts:
    """uid/gid <-> name from the sandbox's own account files (read once, lazily)."""

    def __init__(self, root: Root) -> None:
        self._root = root
        self._passwd: list[list[str]] | None = None
        self._group: list[list[str]] | None = None

    def _read(self, path: str) -> list[list[str]]:
        try:
            fd = self._root.open_regular(path, os.O_RDONLY)
        except (OSError, BadRequestError):
            return []
        with os.fdopen(fd, "rb") as f:
            text = f.read(ACCOUNT_FILE_MAX).decode("utf-8", "replace")
        return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]

    @property
    def passwd(self) -> list[list[str]]:
        if self._passwd is None:
            self._passwd = self._read("/etc/passwd")
        return self._passwd

    @property
    def group(self) -> list[list[str]]:
        if self._group is None:
            self._group = self._read("/etc/group")
        return self._group

    def owner(self, uid: int) -> str:
        return next((e[0] for e in self.passwd if len(e) > 2 and e[2] == str(uid)), str(uid))

    def group_name(self, gid: int) -> str:
        return next((e[0] for e in self.group if len(e) > 2 and e[2] == str(gid)), str(gid))

    def uid(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        for entry in self.passwd:
            if len(entry) > 2 and entry[0] == name and entry[2].isdigit():
                return int(entry[2])
        raise BadRequestError(f"unknown user {name!r} in the sandbox's /etc/passwd")

    def gid(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        for entry in self.group:
            if len(entry) > 2 and entry[0] == name and entry[2].isdigit():
                return int(entry[2])
        raise BadRequestError(f"unknown group {name!r} in the sandbox's /etc/group")

    def home(self, user: str) -> str | None:
        """The home directory of ``user`` (name or uid, ``user:group`` allowed)."""
        name = user.split(":", 1)[0]
        for entry in self.passwd:
            if len(entry) > 5 and (entry[0] == name or entry[2] == name):
                return entry[5] or None
        return None


def info_of(root: Root, path: str, accounts: Accounts, lst: os.stat_result | None = None) -> FileInfo:
    """FileInfo of ``path``. A symlink is reported as one (``is_symlink``, ``link_target``) with the
    type, size and mode of what it points to inside the sandbox, or of the link when dangling."""
    lst = lst if lst is not None else root.lstat(path)
    is_link = stat.S_ISLNK(lst.st_mode)
    target = None
    shown = lst
    if is_link:
        target = root.readlink(path)
        try:
            shown = root.stat(path)
        except OSError:
            shown = lst
    return FileInfo(
        name=split(path)[1] or "/",
        path=path,
        is_dir=stat.S_ISDIR(shown.st_mode),
        size=shown.st_size,
        mode=mode_string(shown.st_mode),
        mtime=int(shown.st_mtime),
        owner=accounts.owner(lst.st_uid),
        group=accounts.group_name(lst.st_gid),
        is_symlink=is_link,
        link_target=target,
    )


# changes -------------------------------------------------------------------------------------
def mkdir(root: Root, path: str, *, recursive: bool, permissions: str | None) -> None:
    check_writable(path)
    mode = parse_mode(permissions, "permissions") if permissions is not None else None
    if root.exists(path):
        raise ConflictError(f"{path}: already exists")
    parent, _ = split(path)
    if recursive:
        root.makedirs(parent)
    with root.parent(path) as (fd, name):
        os.mkdir(name, 0o755, dir_fd=fd)
        if mode is not None:
            made = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                chmod_fd(made, mode)
            finally:
                os.close(made)


def open_for_write(root: Root, path: str, *, permissions: str | None) -> int:
    """An fd to write ``path`` from the start (created with missing parents, truncated)."""
    check_writable(path)
    mode = parse_mode(permissions, "permissions") if permissions is not None else None
    root.makedirs(split(path)[0])
    fd = root.open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if mode is not None:
        os.fchmod(fd, mode)
    return fd


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def delete(root: Root, path: str, *, recursive: bool) -> None:
    check_writable(path)
    with root.parent(path) as (fd, name):
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=fd)
        elif recursive:
            shutil.rmtree(name, dir_fd=fd)  # the fd-based walk: never follows a swapped-in link
        else:
            os.rmdir(name, dir_fd=fd)


def set_permissions(
    root: Root, path: str, *, mode: str | None, owner: str | None, group: str | None, accounts: Accounts
) -> None:
    if mode is None and owner is None and group is None:
        raise BadRequestError("set-permissions needs at least one of mode, owner, group")
    check_writable(path)
    new_mode = parse_mode(mode) if mode is not None else None
    uid = accounts.uid(owner) if owner is not None else -1
    gid = accounts.gid(group) if group is not None else -1
    fd = root.open_path(path, os.O_PATH)
    try:
        if uid != -1 or gid != -1:
            os.chown(f"/proc/self/fd/{fd}", uid, gid)
        if new_mode is not None:
            chmod_fd(fd, new_mode)
    finally:
        os.close(fd)


def _remove_existing(root: Root, path: str) -> None:
    with root.parent(path) as (fd, name):
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def move(root: Root, src: str, dst: str, *, overwrite: bool) -> None:
    check_writable(src)
    check_writable(dst)
    src_info = root.lstat(src)
    if overwrite and src != dst:
        try:
            dst_info = root.lstat(dst)
        except FileNotFoundError:
            dst_info = None
        # rename(2) replaces a file or an empty directory of the same kind; anything else goes first
        if dst_info is not None and stat.S_ISDIR(dst_info.st_mode):
            if not stat.S_ISDIR(src_info.st_mode) or any(True for _ in _entries(root, dst)):
                _remove_existing(root, dst)
        elif dst_info is not None and stat.S_ISDIR(src_info.st_mode):
            _remove_existing(root, dst)
    try:
        root.rename(src, dst, overwrite=overwrite)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise BadRequestError(f"cannot move {src} into itself ({dst})") from None
        if exc.errno == errno.EEXIST:
            raise ConflictError(f"{dst}: already exists (pass overwrite to replace it)") from None
        raise


def _entries(root: Root, path: str) -> list[str]:
    fd = root.open_path(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def copy(root: Root, src: str, dst: str, *, recursive: bool, overwrite: bool) -> None:
    check_writable(dst)
    src_fd = root.open_path(src, os.O_PATH)
    try:
        src_stat = os.fstat(src_fd)
        if stat.S_ISDIR(src_stat.st_mode) and not recursive:
            raise BadRequestError(f"{src}: is a directory (pass recursive to copy it)")
        src_real = root.host_path_of(src_fd)
    finally:
        os.close(src_fd)
    with root.parent(dst) as (dst_parent, _):
        dst_real = root.host_path_of(dst_parent).rstrip("/") + "/" + split(dst)[1]
    if dst_real == src_real or dst_real.startswith(src_real.rstrip("/") + "/"):
        raise BadRequestError(f"cannot copy {src} into itself ({dst})")
    if root.exists(dst):
        if not overwrite:
            raise ConflictError(f"{dst}: already exists (pass overwrite to replace it)")
        _remove_existing(root, dst)
    with root.parent(dst) as (dst_dir, name):
        if stat.S_ISDIR(src_stat.st_mode):
            src_dir = root.open_path(src, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _copy_tree(src_dir, dst_dir, name, stat.S_IMODE(src_stat.st_mode))
            finally:
                os.close(src_dir)
        else:
            fd = root.open_regular(src, os.O_RDONLY)
            try:
                _copy_file(fd, dst_dir, name, stat.S_IMODE(src_stat.st_mode))
            finally:
                os.close(fd)


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


def _copy_tree(src_dir: int, dst_parent: int, name: str, mode: int) -> None:
    """Copy the directory open as ``src_dir`` to ``dst_parent/name``, all by fds: symlinks are
    copied as links, FIFOs, sockets and devices are skipped."""
    os.mkdir(name, 0o700, dir_fd=dst_parent)
    dst_dir = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst_parent)
    try:
        with os.scandir(src_dir) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    os.symlink(os.readlink(entry.name, dir_fd=src_dir), entry.name, dir_fd=dst_dir)
                elif stat.S_ISDIR(info.st_mode):
                    child = os.open(
                        entry.name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=src_dir,
                    )
                    try:
                        _copy_tree(child, dst_dir, entry.name, stat.S_IMODE(info.st_mode))
                    finally:
                        os.close(child)
                elif stat.S_ISREG(info.st_mode):
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                    fd = os.open(entry.name, flags, dir_fd=src_dir)
                    try:
                        if stat.S_ISREG(os.fstat(fd).st_mode):  # still a file after the open
                            _copy_file(fd, dst_dir, entry.name, stat.S_IMODE(info.st_mode))
                    finally:
                        os.close(fd)
        os.fchmod(dst_dir, mode)
    finally:
        os.close(dst_dir)


# text edits -----------------------------------------------------------------------------------
def _read_text(fd: int, path: str) -> str:
    size = os.fstat(fd).st_size
    if size > EDIT_MAX_BYTES:
        raise BadRequestError(f"{path}: too large to edit ({size} bytes, at most {EDIT_MAX_BYTES})")
    data = b""
    while chunk := os.read(fd, COPY_CHUNK):
        data += chunk
        if len(data) > EDIT_MAX_BYTES:
            raise BadRequestError(f"{path}: too large to edit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequestError(f"{path}: not a UTF-8 text file") from None


def _write_text(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    os.lseek(fd, 0, os.SEEK_SET)
    write_all(fd, data)
    os.ftruncate(fd, len(data))


def edit_file(root: Root, path: str, edits: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """Apply find/replace edits in order, each on the result of the previous one, all or nothing.
    Every occurrence is replaced; an edit that finds nothing fails the whole call (400)."""
    check_writable(path)
    fd = root.open_regular(path, os.O_RDWR)
    try:
        before = _read_text(fd, path)
        after = before
        total = 0
        for index, (find, replace) in enumerate(edits):
            if not find:
                raise BadRequestError(
                    "invalid edit", errors=[{"field": f"edits.{index}.find", "error": "must not be empty"}]
                )
            count = after.count(find)
            if count == 0:
                raise BadRequestError(
                    f"{path}: edit {index}: text not found; nothing was changed",
                    errors=[{"field": f"edits.{index}.find", "error": "not found in the file"}],
                )
            after = after.replace(find, replace)
            total += count
        if after != before:
            _write_text(fd, after)
    finally:
        os.close(fd)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            f"a{path}",
            f"b{path}",
        )
    )
    return diff, total


def edit_files(root: Root, paths: Sequence[str], find: str, replace: str) -> list[dict[str, object]]:
    """Replace ``find`` in each file; one result per file, a failure never stops the others."""
    if not find:
        raise BadRequestError("invalid edit", errors=[{"field": "find", "error": "must not be empty"}])
    results: list[dict[str, object]] = []
    for path in paths:
        try:
            edit_file(root, path, [(find, replace)])
            results.append({"file": path, "success": True})
        except (BadRequestError, NotFoundError, PermissionDeniedError, ConflictError) as exc:
            results.append({"file": path, "success": False, "error": exc.message})
        except OSError as exc:
            results.append({"file": path, "success": False, "error": api_error(exc, path).message})
    return results
