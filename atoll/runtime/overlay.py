"""The sandbox root filesystem: read-only template layers under a private writable upper dir.

Mounted with mount(2) directly (a `mount` process per create would cost milliseconds)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Sequence
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount_overlay(lower_dirs: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(d) for d in lower_dirs)
    # index=off and xino=off: the sandbox's upper dir must stay portable (stop/start, snapshots)
    options = f"lowerdir={lower},upperdir={upper},workdir={work},index=off,xino=off"
    # nosuid: a setuid file a sandbox writes must not be one for the host's users; inside, the
    # sandbox's no_new_privs already ignores setuid bits, so nothing there changes
    flags = MS_NODEV | MS_NOSUID
    rc = _libc.mount(b"overlay", str(target).encode(), b"overlay", flags, options.encode())
    _check(rc, f"mount overlay on {target}")


def unmount(target: Path) -> None:
    """Unmount ``target`` if it is mounted; lazily when busy, so teardown never wedges."""
    rc = _libc.umount2(str(target).encode(), 0)
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
        return
    if err == errno.EBUSY:
        _check(_libc.umount2(str(target).encode(), MNT_DETACH), f"lazy unmount {target}")
        return
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points below ``prefix`` (for the reconciler's leak sweep), deepest first."""
    found: list[Path] = []
    prefix_s = str(prefix).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix_s):
                found.append(Path(mount_point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
