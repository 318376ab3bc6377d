"""Idmapped mounts: a directory seen through a user namespace's id mapping (Linux >= 5.12).

A sandbox in its own user namespace sees host uid ``base + n`` as uid ``n``. Its layers stay on
disk as they were built (root-owned files owned by uid 0): an idmapped mount of each layer shows
on-disk uid ``n`` as ``base + n``, so nothing is copied or chowned (``overlay.mount_overlay``).

The mapping comes from a user namespace: a short-lived ``unshare -U`` child whose maps the
server writes; its namespace outlives it through the fd, and each idmapped mount keeps a
reference of its own, so the fd is closed as soon as the mounts are made.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 and aarch64 share these (the new mount API's numbers are the same on every arch)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
CHILD_READY_TIMEOUT_S = 5.0
BUSYBOX = "/bin/busybox"  # Debian's busybox-static
SHORT_FLAGS = {"user": "U", "net": "n", "mount": "m", "ipc": "i", "uts": "u", "pid": "p"}


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


READY_FILE = "/proc/sys/kernel/ostype"  # any short file: what the child prints once it is in


@contextlib.contextmanager
def mapped_child(namespaces: tuple[str, ...], base: int, size: int) -> Iterator[int]:
    """The pid of a child in new ``namespaces`` (``user`` first: one unshare(2) makes the user
    namespace, then the others inside it), its ids ``0..size-1`` mapped to host ``base..``;
    ended when the block ends (``cat`` waits on its stdin: it lives exactly as long as needed).

    ``cat`` first prints ``READY_FILE``: it runs only after the unshare, so the first byte on its
    stdout says the namespaces exist (one blocking read, not a loop polling /proc that would
    contend with the event loop for the interpreter while a sandbox boots). The static busybox
    (the helper layer's, ``helpers.SOURCES``) when present: two execs of a static binary cost
    less than util-linux's dynamically linked ``unshare`` and ``cat``."""
    if os.path.exists(BUSYBOX):
        flags = [f"-{SHORT_FLAGS[name]}" for name in namespaces]
        argv = [BUSYBOX, "unshare", *flags, BUSYBOX, "cat", READY_FILE, "-"]
    else:
        flags = [f"--{name}" for name in namespaces]
        argv = [shutil.which("unshare") or "/usr/bin/unshare", *flags, "cat", READY_FILE, "-"]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], CHILD_READY_TIMEOUT_S)
        if not ready or not os.read(child.stdout.fileno(), 64):
            raise OSError(f"unshare {' '.join(flags)} did not start (exit {child.poll()})")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child.pid}/{name}", "w") as f:
                f.write(f"0 {base} {size}\n")
        yield child.pid
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.kill()
        child.wait()
        child.stdout.close()


@contextlib.contextmanager
def userns_fd(base: int, size: int, existing: Path | None = None) -> Iterator[int]:
    """An fd of a fresh user namespace mapping ids ``0..size-1`` to host ``base..base+size-1``
    (or of ``existing``, one that maps them already: no process to start)."""
    if existing is not None:
        fd = os.open(existing, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    with mapped_child(("user",), base, size) as pid:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_idmapped(source: Path, ns_fd: int, *, read_only: bool) -> int:
    """A detached copy of mount ``source`` (not its submounts) seen through ``ns_fd``'s mapping,
    nosuid and nodev: an fd, usable as a path through ``/proc/self/fd/<fd>`` (``overlay``) or
    attached with ``move_tree``. Closing it unmounts it unless it was attached."""
    tree = _check(
        _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, str(source).encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
        f"open_tree {source}",
    )
    try:
        flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        attr = _MountAttr(flags | (MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, ns_fd)
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
            ),
            f"idmap {source}",
        )
    except BaseException:
        os.close(tree)
        raise
    return tree


def move_tree(tree: int, target: Path) -> None:
    """Attach the detached mount ``tree`` (``open_idmapped``) at ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    _check(
        _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, str(target).encode(), MOVE_MOUNT_F_EMPTY_PATH),
        f"move_mount to {target}",
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_CAPGET = 125
SYS_CAPSET = 126


def _raise_effective_caps() -> None:
    """Effective capabilities = permitted, for the calling thread only (capset is per thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(SYS_CAPGET, ctypes.byref(header), data), "capget")
    for d in data:
        d.effective = d.permitted
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(header), data), "capset")


@contextlib.contextmanager
def fs_owner(uid: int, gid: int) -> Iterator[None]:
    """Files the calling thread creates belong to ``uid:gid`` (its fsuid/fsgid), keeping its
    capabilities. Per thread: run it in a worker thread, never on the event loop's.

    Through an idmapped mount a file can only be created by an id the mapping covers; the host's
    root is not one of them, the sandbox's mapped root is."""
    old_uid = _libc.setfsuid(uid)
    old_gid = _libc.setfsgid(gid)
    try:
        _raise_effective_caps()  # dropped by the kernel when fsuid leaves 0
        yield
    finally:
        _libc.setfsgid(old_gid)
        _libc.setfsuid(old_uid)  # back to 0: the kernel restores the file capabilities


# the id range's root of the sandbox whose files the current request works on, if it has one
# (set by the filesystem API for its worker threads: asyncio.to_thread copies the context)
FS_OWNER: ContextVar[int | None] = ContextVar("atoll_fs_owner", default=None)


@contextlib.contextmanager
def context_fs_owner() -> Iterator[None]:
    """``fs_owner`` of ``FS_OWNER``, when set: files the API creates belong to the mapped root."""
    owner = FS_OWNER.get()
    if owner is None:
        yield
        return
    with fs_owner(owner, owner):
        yield


MAPPED_IDS = 65536  # ids inside a user-namespaced sandbox (userns.RANGE_SIZE)


def inside(host_id: int) -> int:
    """A file owner as the sandbox sees it (``FS_OWNER``'s range shifted back; others unchanged)."""
    base = FS_OWNER.get()
    return host_id - base if base is not None and base <= host_id < base + MAPPED_IDS else host_id


def outside(sandbox_id: int) -> int:
    """An owner the sandbox names, as the host must pass it to chown(2) (-1: unchanged)."""
    base = FS_OWNER.get()
    if base is None or sandbox_id == -1:
        return sandbox_id
    if not 0 <= sandbox_id < MAPPED_IDS:
        raise OSError(
            errno.EINVAL, f"id {sandbox_id} is outside the sandbox's user namespace (0..{MAPPED_IDS - 1})"
        )
    return base + sandbox_id
