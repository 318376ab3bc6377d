"""A sandbox's disk: the writable part of its root filesystem (the overlay's upper and work dirs)
and its generated ``/etc`` files, on a filesystem of their own with a fixed size and inode count.

Without it they would live on the host's filesystem, and one sandbox could fill the host's disk
or exhaust its inodes. The host's root filesystem offers no per-directory quota here (ext4
without the ``project`` feature), so each sandbox gets a sparse ext4 image (``disk.img`` in its
directory) loop-mounted on ``disk/``: writes past its size fail with ENOSPC inside the sandbox
only, and its inodes are its own. The image costs only the blocks written (holes are punched
back on delete, ``discard``); a cached blank image per size is copied in a few milliseconds
instead of running ``mkfs`` per sandbox. The loop device and the mount are set up with
syscalls (``_mount_image``), not a ``mount`` process. A ``DiskPool`` keeps a few disks copied
and mounted ahead of demand, so a create usually just renames one into place.

Sparse images are over-committed: their sizes add up to more than the data filesystem holds.
Admission (``atoll.server.disk_budget``) bounds that, and a watermark
(``atoll.server.disk_watermark``) clamps the heaviest disk (``disk_space.clamp``: ENOSPC in its
own disk) before the data filesystem fills and fails everyone's writes (docs/disk.md).

With quotas off (``--no-disk-quota``), ``disk/`` is a plain directory bind-mounted on itself
``nosuid,nodev`` (so a setuid file a sandbox writes there is none for the host's users): same
layout, no limit."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from atoll._tasks import cancel_and_wait
from atoll.runtime import overlay
from atoll.runtime.commands import run
from atoll.runtime.trees import remove_host_tree

log = logging.getLogger("atoll.disk")

MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard")
# noinit_itable: the image is sparse, its inode tables already read as zeroes
MOUNT_OPTIONS = "loop,nodev,nosuid,noatime,discard,noinit_itable,errors=remount-ro"
# the same, as mount(2) takes them
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_NOATIME, MS_BIND = 0x2, 0x4, 0x20, 0x400, 0x1000
MOUNT_FLAGS = MS_NODEV | MS_NOSUID | MS_NOATIME
MOUNT_DATA = b"discard,noinit_itable,errors=remount-ro"
LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A  # Linux 5.8+
LO_FLAGS_AUTOCLEAR = 4  # the loop device goes away with its last user (the mount)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


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


def _is_mount_point(path: Path) -> bool:
    """Also true for a bind mount of a directory on its own filesystem (same ``st_dev``)."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4].replace("\\040", " ") == target for line in f)


def _bind_nosuid(path: Path) -> None:
    """``path`` bind-mounted on itself, then made ``nosuid,nodev`` (a bind takes no flags)."""
    rc = _libc.mount(str(path).encode(), str(path).encode(), None, MS_BIND, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {path}: {os.strerror(err)}")
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
    if _libc.mount(None, str(path).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        overlay.unmount(path)
        raise OSError(err, f"remount {path} nosuid: {os.strerror(err)}")


async def attach(disk: DiskSpec) -> None:
    """Make ``disk/`` ready (creating the image on first use); idempotent."""
    disk.mount_point.mkdir(parents=True, exist_ok=True)
    if disk.size_mib is None:
        if not await asyncio.to_thread(_is_mount_point, disk.mount_point):
            await asyncio.to_thread(_bind_nosuid, disk.mount_point)
        return
    if is_mounted(disk.mount_point):
        return
    if not disk.image.exists():
        blank = await _blank(disk.blank_dir, disk.size_mib)
        partial = disk.image.with_suffix(".partial")
        await asyncio.to_thread(_copy_sparse, blank, partial)
        partial.rename(disk.image)
    try:
        await asyncio.to_thread(_mount_image, disk.image, disk.mount_point)
    except _NoLoopConfigure:  # an older kernel: let mount(8) set the loop device up
        argv = ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(disk.image), str(disk.mount_point)]
        await run(argv, timeout=30)


class _NoLoopConfigure(OSError):
    pass


def _loop_config(backing_fd: int, image: Path) -> bytes:
    """``struct loop_config`` (linux/loop.h): fd, block size, ``loop_info64``, reserved."""
    name = str(image).encode()[:63]
    info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR, name, b"", b"", 0, 0)
    return struct.pack("=II", backing_fd, 0) + info + bytes(64)


def _mount_image(image: Path, mount_point: Path) -> None:
    """What ``mount -o loop`` does, in a few syscalls instead of a process (~20 ms of fork,
    exec and libmount): bind ``image`` to a free loop device (auto-clearing, so it is released
    with the mount) and mount its ext4 filesystem on ``mount_point``."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(100):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device_path = f"/dev/loop{number}"
                try:
                    device = os.open(device_path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:  # devtmpfs has not made the node yet
                    continue
                try:
                    try:
                        fcntl.ioctl(device, LOOP_CONFIGURE, _loop_config(backing, image))
                    except OSError as exc:
                        if exc.errno == errno.EBUSY:  # another process took it first
                            continue
                        if exc.errno in (errno.EINVAL, errno.ENOTTY):
                            raise _NoLoopConfigure(exc.errno, "LOOP_CONFIGURE is not supported") from None
                        raise
                    rc = _libc.mount(
                        device_path.encode(), str(mount_point).encode(), b"ext4", MOUNT_FLAGS, MOUNT_DATA
                    )
                    if rc != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"mount {image} on {mount_point}: {os.strerror(err)}")
                    return
                finally:
                    os.close(device)  # the mount holds it now; after a failure, this frees it
            raise OSError(errno.EBUSY, "no free loop device")
        finally:
            os.close(control)
    finally:
        os.close(backing)


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


def _remove(entry: Path) -> None:
    """A pooled disk's directory, however deep (a crashed server's may hold anything)."""
    try:
        remove_host_tree(entry)
    except OSError:
        log.exception("could not remove %s", entry)


class DiskPool:
    """Disks copied and mounted ahead of demand: a create renames a ready one into its sandbox
    directory (``take``, one syscall; the mount moves with the directory) instead of copying and
    mounting on its path. From then on it is that sandbox's disk like any other, released by its
    delete or failed create. Refill runs in the background, one disk at a time, and never holds
    up a create: with the pool empty, ``take`` says no and the caller attaches as usual. Ready
    disks live in ``directory`` (``<token>/disk.img`` on ``<token>/disk``); ``start`` removes
    whatever a crash left there, and ``close`` releases the rest."""

    def __init__(
        self,
        directory: Path,
        *,
        size_mib: int,
        blank_dir: Path,
        target_size: int,
    ) -> None:
        self.directory = directory
        self.size_mib = size_mib
        self.blank_dir = blank_dir
        self.target_size = target_size
        self._ready: deque[Path] = deque()
        self._wake = asyncio.Event()
        self._refiller: asyncio.Task[None] | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    async def start(self) -> list[str]:
        """Remove leftovers (a crashed server's ready disks) and start filling."""
        removed = await asyncio.to_thread(self._sweep)
        if self.target_size > 0:
            self._refiller = asyncio.create_task(self._refill_forever())
            self._wake.set()
        return removed

    def _sweep(self) -> list[str]:
        removed = []
        for mount_point in overlay.mounts_under(self.directory):
            overlay.unmount(mount_point)
            removed.append(f"pooled disk mount {mount_point}")
        if self.directory.exists():
            for entry in self.directory.iterdir():
                _remove(entry)
                removed.append(f"pooled disk {entry.name}")
        self.directory.mkdir(parents=True, exist_ok=True)
        return removed

    def take(self, disk: DiskSpec) -> bool:
        """Move a ready disk into ``disk``'s sandbox directory, which must not exist yet. False
        (and nothing changed) when there is none, or the disk is of another kind."""
        if disk.size_mib != self.size_mib or not self._ready or disk.sandbox_dir.exists():
            return False
        self._wake.set()
        entry = self._ready.popleft()
        disk.sandbox_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, disk.sandbox_dir)  # a directory holding a mount point may move
        except OSError:
            log.exception("could not move pooled disk %s into %s", entry.name, disk.sandbox_dir)
            self._discard(entry)
            return False
        return True

    def _spec(self, entry: Path) -> DiskSpec:
        return DiskSpec(sandbox_dir=entry, size_mib=self.size_mib, blank_dir=self.blank_dir)

    def _discard(self, entry: Path) -> None:
        detach(self._spec(entry))
        _remove(entry)

    async def _refill_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self._ready) < self.target_size:
                entry = self.directory / os.urandom(8).hex()
                job = asyncio.ensure_future(attach(self._spec(entry)))
                try:
                    await asyncio.shield(job)  # a mount half-way in a thread is seen through ...
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await job
                    await asyncio.to_thread(self._discard, entry)  # ... and then undone
                    raise
                except Exception:
                    log.exception("could not prepare a pooled disk")
                    await asyncio.to_thread(self._discard, entry)
                    await asyncio.sleep(1)
                    break
                self._ready.append(entry)

    async def close(self) -> None:
        await cancel_and_wait(self._refiller)
        while self._ready:
            entry = self._ready.popleft()
            await asyncio.to_thread(self._discard, entry)
        await asyncio.to_thread(self._sweep)
        with contextlib.suppress(OSError):
            self.directory.rmdir()
