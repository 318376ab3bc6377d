"""A sandbox's disk: the writable part of its root filesystem (the overlay's upper and work dirs)
and its generated ``/etc`` files, on a filesystem of their own with a fixed size and inode count.

Without it they would live on the host's filesystem, and one sandbox could fill the host's disk
or exhaust its inodes. The host's root filesystem offers no per-directory quota here (ext4
without the ``project`` feature), so each sandbox gets a sparse ext4 image (``disk.img`` in its
directory) loop-mounted on ``disk/``: writes past its size fail with ENOSPC inside the sandbox
only, and its inodes are its own. The image costs only the blocks written (holes are punched
back on delete, ``discard``); a cached blank image per size is copied in a few milliseconds
instead of running ``mkfs`` per sandbox.

With quotas off (``--no-disk-quota``), ``disk/`` is a plain directory: same layout, no limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from atoll.runtime import overlay
from atoll.runtime._proc import run

MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard")
# noinit_itable: the image is sparse, its inode tables already read as zeroes
MOUNT_OPTIONS = "loop,nodev,nosuid,noatime,discard,noinit_itable,errors=remount-ro"


@dataclass(frozen=True, kw_only=True)
class DiskSpec:
    sandbox_dir: Path
    size_mib: int | None  # None: no quota, a plain directory
    blank_dir: Path  # cache of formatted blank images, one per size

    @property
    def image(self) -> Path:
        return self.sandbox_dir / "disk.img"

    @property
    def mount_point(self) -> Path:
        return self.sandbox_dir / "disk"


def is_mounted(path: Path) -> bool:
    try:
        return path.is_dir() and os.stat(path).st_dev != os.stat(path.parent).st_dev
    except FileNotFoundError:
        return False


async def attach(disk: DiskSpec) -> None:
    """Make ``disk/`` ready (creating the image on first use); idempotent."""
    disk.mount_point.mkdir(parents=True, exist_ok=True)
    if disk.size_mib is None or is_mounted(disk.mount_point):
        return
    if not disk.image.exists():
        blank = await _blank(disk.blank_dir, disk.size_mib)
        partial = disk.image.with_suffix(".partial")
        await asyncio.to_thread(_copy_sparse, blank, partial)
        partial.rename(disk.image)
    argv = ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(disk.image), str(disk.mount_point)]
    await run(argv, timeout=30)


def detach(disk: DiskSpec) -> None:
    """Unmount ``disk/`` (the loop device goes with it); the image stays. Idempotent."""
    overlay.unmount(disk.mount_point)


async def _blank(blank_dir: Path, size_mib: int) -> Path:
    blank = blank_dir / f"ext4-{size_mib}M.img"
    if blank.exists():
        return blank
    blank_dir.mkdir(parents=True, exist_ok=True)
    partial = blank_dir / f".{blank.name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        with open(partial, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        await run([*MKFS, str(partial)], timeout=120)
        partial.rename(blank)  # atomic: a concurrent first use makes its own and one wins
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return blank


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy only the data extents (a blank image is a few MiB of metadata in a sparse file)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(dst, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(src, start, os.SEEK_HOLE)
                while start < end:
                    copied = os.copy_file_range(src, dst, end - start, start, start)
                    if copied <= 0:
                        raise OSError(f"short copy of {source} at {start}")
                    start += copied
                offset = end
        finally:
            os.close(dst)
    finally:
        os.close(src)
