"""A network slot's own user namespace, made with its network namespace (``atoll.network.pool``).

A network namespace belongs to the user namespace that was current when it was made. One made by
the host's root (``ip netns add``) could not serve a sandbox in a user namespace: from inside,
sysfs cannot be mounted and ``<runtime> exec`` cannot join it. So with user namespaces on, each
slot is made as a pair: a short-lived ``unshare --user --net`` child whose id maps the server
writes (one claimed range, ``userns.Ranges``), its user namespace bound on ``SLOT_DIR/<netns
name>`` and its network namespace on the pool's usual ``/run/netns/<name>``. The runtime joins
both by path (``oci_config.join_userns``): nothing is moved or set up when a sandbox boots.

The range is the slot's for its whole life (a paused sandbox keeps its slot, so its range): it is
claimed before the namespaces are made and released after they are gone (``NetworkPool``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from atoll.runtime import idmap
from atoll.runtime.userns import RANGE_SIZE, IdRange

SLOT_DIR = Path("/run/atoll/userns-slots")  # host-wide, like the claims: names carry the instance
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def userns_path(netns_name: str) -> Path:
    return SLOT_DIR / netns_name


def _base_file(netns_name: str) -> Path:
    return SLOT_DIR / f"{netns_name}.base"


def _bind(source: str, target: Path) -> None:
    target.touch(mode=0o600, exist_ok=True)
    if _libc.mount(source.encode(), str(target).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {source} on {target}: {os.strerror(err)}")


def _share_mount_point(directory: Path) -> None:
    """Make ``directory`` a shared mount point of its own, as ``ip netns add`` does before its
    first bind: a bind made on a plain ``/run/netns`` is hidden (and can no longer be undone)
    once ``ip`` turns the directory into a mount point over it."""
    path = str(directory).encode()
    if _libc.mount(b"none", path, None, MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        err = ctypes.get_errno()
        raise OSError(err, f"make {directory} shared: {os.strerror(err)}")
    for flags in (MS_BIND | MS_REC, MS_SHARED | MS_REC):
        if _libc.mount(path if flags & MS_BIND else b"none", path, None, flags, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"make {directory} a shared mount point: {os.strerror(err)}")


def _unbind(target: Path) -> None:
    # a namespace bound twice (a crash between a slot's removal and its re-creation) takes two
    for _ in range(8):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0 or not _bound(target):
            break
    with contextlib.suppress(FileNotFoundError):
        target.unlink()


def create(netns_path: Path, id_range: IdRange) -> None:
    """Make ``netns_path`` (absent) a network namespace owned by a new user namespace mapping
    ``id_range``; the user namespace is kept on ``userns_path(netns_path.name)``."""
    SLOT_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    netns_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _share_mount_point(netns_path.parent)
    user = userns_path(netns_path.name)
    if user.exists():  # a crash's leftover (a bound nsfs file cannot be opened to bind again)
        remove(netns_path)
    # the kernel makes the user namespace first and the network namespace inside it
    with idmap.mapped_child(("user", "net"), id_range.base, id_range.size) as pid:
        try:
            _base_file(netns_path.name).write_text(str(id_range.base))
            _bind(f"/proc/{pid}/ns/user", user)
            _bind(f"/proc/{pid}/ns/net", netns_path)
        except BaseException:
            remove(netns_path)
            raise


def remove(netns_path: Path) -> None:
    """Undo ``create`` (idempotent); the network namespace goes once nothing else holds it."""
    try:
        _unbind(netns_path)
    finally:  # never a user namespace (and its range's claim) left without its slot
        _unbind(userns_path(netns_path.name))
        with contextlib.suppress(FileNotFoundError):
            _base_file(netns_path.name).unlink()


def existing_names() -> set[str]:
    """The slots (of any instance on the host) with anything left in ``SLOT_DIR``."""
    try:
        return {entry.name.removesuffix(".base") for entry in SLOT_DIR.iterdir()}
    except OSError:  # none made yet on this host
        return set()


def exists(netns_name: str) -> bool:
    """Whether slot ``netns_name`` (of any instance on the host) still has its user namespace."""
    return _bound(userns_path(netns_name))


def _bound(target: Path) -> bool:
    """``target`` has a namespace bound on it: a server killed between ``_bind``'s touch and its
    mount (or a slot file copied around) leaves a plain file, which must not keep a claim alive."""
    try:
        return target.stat().st_dev != target.parent.stat().st_dev
    except OSError:
        return False


def of(netns_path: Path | None) -> tuple[Path, IdRange] | None:
    """The user namespace made with ``netns_path`` and its range, if it was made by ``create``."""
    if netns_path is None:
        return None
    try:
        base = int(_base_file(netns_path.name).read_text())
    except (OSError, ValueError):
        return None
    user = userns_path(netns_path.name)
    return (user, IdRange(base, RANGE_SIZE)) if _bound(user) else None
