"""The filesystem operations of the API, on one sandbox's root (``confined.Root``).

Every function here is synchronous and blocking; the server runs them in a worker thread. Paths
are normalized sandbox paths (``confined.normalize``); OSErrors are raised as they come and
mapped to API errors by the caller (``confined.mapped``). Names of owners and groups come from
the sandbox's own ``/etc/passwd`` and ``/etc/group``, never the host's.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from atoll._exceptions import FileAccessDenied, FileConflict, FileNotFound, FileRequestInvalid
from atoll.runtime import idmap
from atoll.runtime.confined import Root, check_writable, chmod_fd, file_error, split
from atoll.runtime.replace import NewVersion, new_version, write_all
from atoll.runtime.trees import remove_tree

MODE_RE = re.compile(r"^[0-7]{1,4}$")
ACCOUNT_FILE_MAX = 4 * 1024 * 1024
EDIT_MAX_BYTES = 10 * 1024 * 1024
READ_CHUNK = 8 * 1024 * 1024
MAX_ID = 2**32 - 2  # uid/gid: 2**32 - 1 means "unchanged" to chown(2)


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
        raise FileRequestInvalid(
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
        except (OSError, FileRequestInvalid):
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
        if _numeric(name, "owner"):
            return int(name)
        for entry in self.passwd:
            if len(entry) > 2 and entry[0] == name and _numeric(entry[2], "owner", quiet=True):
                return int(entry[2])
        raise FileRequestInvalid(
            f"owner {name!r}: no such user in the sandbox's /etc/passwd",
            errors=[{"field": "owner", "error": "no such user in the sandbox"}],
        )

    def gid(self, name: str) -> int:
        if _numeric(name, "group"):
            return int(name)
        for entry in self.group:
            if len(entry) > 2 and entry[0] == name and _numeric(entry[2], "group", quiet=True):
                return int(entry[2])
        raise FileRequestInvalid(
            f"group {name!r}: no such group in the sandbox's /etc/group",
            errors=[{"field": "group", "error": "no such group in the sandbox"}],
        )

    def home(self, user: str) -> str | None:
        """The home directory of ``user`` (name or uid, ``user:group`` allowed)."""
        name = user.split(":", 1)[0]
        for entry in self.passwd:
            if len(entry) > 5 and (entry[0] == name or entry[2] == name):
                return entry[5] or None
        return None


def _numeric(value: str, field: str, *, quiet: bool = False) -> bool:
    """A decimal id (ASCII digits only), within what a uid/gid can be."""
    if not (value.isascii() and value.isdigit()):
        return False
    if int(value) > MAX_ID:
        if quiet:
            return False
        raise FileRequestInvalid(
            f"invalid {field}: {value} is past the largest id ({MAX_ID})",
            errors=[{"field": field, "error": f"must be at most {MAX_ID}"}],
        )
    return True


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
        owner=accounts.owner(idmap.inside(lst.st_uid)),  # user namespaces: ids as seen inside
        group=accounts.group_name(idmap.inside(lst.st_gid)),
        is_symlink=is_link,
        link_target=target,
    )


# changes -------------------------------------------------------------------------------------
def mkdir(root: Root, path: str, *, recursive: bool, permissions: str | None) -> None:
    check_writable(path)
    mode = parse_mode(permissions, "permissions") if permissions is not None else None
    if root.exists(path):
        raise FileConflict(f"{path}: already exists")
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


def open_for_write(root: Root, path: str, *, permissions: str | None) -> NewVersion:
    """A new version of ``path`` to write from the start (missing parents are created)."""
    check_writable(path)
    mode = parse_mode(permissions, "permissions") if permissions is not None else None
    root.makedirs(split(path)[0])
    return new_version(root, path, mode=mode)


def delete(root: Root, path: str, *, recursive: bool) -> None:
    check_writable(path)
    with root.parent(path) as (fd, name):
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=fd)
        elif recursive:
            remove_tree(fd, name)  # by fds, never following a swapped-in link; any depth
        else:
            os.rmdir(name, dir_fd=fd)


def set_permissions(
    root: Root, path: str, *, mode: str | None, owner: str | None, group: str | None, accounts: Accounts
) -> None:
    if mode is None and owner is None and group is None:
        raise FileRequestInvalid("set-permissions needs at least one of mode, owner, group")
    check_writable(path)
    new_mode = parse_mode(mode) if mode is not None else None
    uid = accounts.uid(owner) if owner is not None else -1
    gid = accounts.gid(group) if group is not None else -1
    fd = root.open_path(path, os.O_PATH)
    try:
        if uid != -1 or gid != -1:
            os.chown(f"/proc/self/fd/{fd}", idmap.outside(uid), idmap.outside(gid))
        if new_mode is not None:
            chmod_fd(fd, new_mode)
    finally:
        os.close(fd)


# text edits -----------------------------------------------------------------------------------
def _read_text(fd: int, path: str) -> str:
    size = os.fstat(fd).st_size
    if size > EDIT_MAX_BYTES:
        raise FileRequestInvalid(f"{path}: too large to edit ({size} bytes, at most {EDIT_MAX_BYTES})")
    data = b""
    while chunk := os.read(fd, READ_CHUNK):
        data += chunk
        if len(data) > EDIT_MAX_BYTES:
            raise FileRequestInvalid(f"{path}: too large to edit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRequestInvalid(f"{path}: not a UTF-8 text file") from None


def _write_text(root: Root, path: str, text: str) -> None:
    """Replace the file whole (``NewVersion``), keeping its owner and mode."""
    version = new_version(root, path)
    try:
        write_all(version.fd, text.encode("utf-8"))
    except BaseException:
        version.abort()
        raise
    version.commit()


def edit_file(root: Root, path: str, edits: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """Apply find/replace edits in order, each on the result of the previous one, all or nothing.
    Every occurrence is replaced; an edit that finds nothing fails the whole call (400)."""
    check_writable(path)
    fd = root.open_regular(path, os.O_RDONLY)
    try:
        before = _read_text(fd, path)
        after = before
        total = 0
        for index, (find, replace) in enumerate(edits):
            if not find:
                raise FileRequestInvalid(
                    "invalid edit", errors=[{"field": f"edits.{index}.find", "error": "must not be empty"}]
                )
            count = after.count(find)
            if count == 0:
                raise FileRequestInvalid(
                    f"{path}: edit {index}: text not found; nothing was changed",
                    errors=[{"field": f"edits.{index}.find", "error": "not found in the file"}],
                )
            after = after.replace(find, replace)
            total += count
        if after != before:
            _write_text(root, path, after)
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
        raise FileRequestInvalid("invalid edit", errors=[{"field": "find", "error": "must not be empty"}])
    results: list[dict[str, object]] = []
    for path in paths:
        try:
            edit_file(root, path, [(find, replace)])
            results.append({"file": path, "success": True})
        except (FileRequestInvalid, FileNotFound, FileAccessDenied, FileConflict) as exc:
            results.append({"file": path, "success": False, "error": exc.message})
        except OSError as exc:
            results.append({"file": path, "success": False, "error": file_error(exc, path).message})
    return results
