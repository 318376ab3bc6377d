"""What sandbox disks really cost the data filesystem, and the clamp that stops one growing.

A sandbox's disk (``atoll.runtime.disk``) is a sparse image: it costs the host only the blocks
written, so its size is a ceiling, not a reservation. Two figures tell what one really costs:
the image's ``st_blocks`` (what the host has allocated) and the blocks its own filesystem counts
as used (``statvfs`` inside, which includes data still dirty in the page cache and blocks
``fallocate``d but never written). The second minus the first is *pending*: growth the host
will have to back without the sandbox writing another byte. Free space net of pending is the
honest figure to watch; ``statvfs`` of the host alone lags the page cache by up to 30 s.

The clamp: a *ballast* file in the disk's root (beside ``upper/``, ``work/`` and ``etc/``, out
of the sandbox's sight) ``fallocate``d over all the free blocks of the sandbox's filesystem.
From then on the sandbox's own writes fail with ENOSPC in its own disk, while it keeps running,
reading, overwriting and deleting (a delete punches holes back into the image through
``discard``, so what it frees it may write again). The ballast costs the host a few metadata
blocks: its extents are unwritten, holes in the image. Removing it lifts the clamp. It lives in
the image, so it survives a stop or a server restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_NAME = "disk.img"
MOUNT_NAME = "disk"
BALLAST_NAME = ".atoll-ballast"
_CHUNK_BYTES = 256 * 1024 * 1024  # fallocate in chunks: one ENOSPC halves the chunk, not the work
_MIN_CHUNK_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class DiskUse:
    """One sandbox disk as the data filesystem sees it."""

    sandbox_dir: Path
    size_bytes: int  # the image's apparent size: the disk's ceiling, what admission commits
    image_bytes: int  # blocks the host has allocated for the image (st_blocks)
    used_bytes: int  # blocks its own filesystem counts as used, less the ballast (0: not mounted)
    clamped: bool

    @property
    def pending_bytes(self) -> int:
        """Growth the host has to back already: dirty pages, blocks fallocated inside."""
        return max(0, self.used_bytes - self.image_bytes)

    @property
    def cost_bytes(self) -> int:
        """What the disk costs the host, or will once its page cache is written."""
        return self.image_bytes + self.pending_bytes


@dataclass(frozen=True, kw_only=True)
class HostSpace:
    """The data filesystem and every sandbox disk on it."""

    total_bytes: int
    free_bytes: int  # available to an unprivileged writer (f_bavail): root's reserve stays spare
    disks: tuple[DiskUse, ...]

    @property
    def pending_bytes(self) -> int:
        return sum(d.pending_bytes for d in self.disks)

    @property
    def effective_free_bytes(self) -> int:
        """Free space once every disk's pending growth has landed."""
        return self.free_bytes - self.pending_bytes

    @property
    def committed_bytes(self) -> int:
        return sum(d.size_bytes for d in self.disks)

    @property
    def disks_cost_bytes(self) -> int:
        return sum(d.cost_bytes for d in self.disks)


def measure_disk(sandbox_dir: Path) -> DiskUse | None:
    """``sandbox_dir``'s disk, or None when it has no image (no quota, or not made yet)."""
    try:
        image = os.stat(sandbox_dir / IMAGE_NAME)
    except (FileNotFoundError, NotADirectoryError):
        return None
    mount_point = sandbox_dir / MOUNT_NAME
    used = 0
    clamped = False
    try:
        if os.stat(mount_point).st_dev != os.stat(sandbox_dir).st_dev:  # mounted
            inside = os.statvfs(mount_point)
            used = (inside.f_blocks - inside.f_bfree) * inside.f_frsize
            with contextlib.suppress(FileNotFoundError):
                ballast = os.stat(mount_point / BALLAST_NAME, follow_symlinks=False)
                used -= ballast.st_blocks * 512
                clamped = True
    except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
        pass
    return DiskUse(
        sandbox_dir=sandbox_dir,
        size_bytes=image.st_size,
        image_bytes=image.st_blocks * 512,
        used_bytes=max(0, used),
        clamped=clamped,
    )


def survey(data_dir: Path, disk_parents: tuple[Path, ...]) -> HostSpace:
    """The data filesystem's free space and the disks of every directory in ``disk_parents``
    (the sandboxes' and the disk pool's): one ``stat`` and one ``statvfs`` per disk."""
    host = os.statvfs(data_dir)
    disks: list[DiskUse] = []
    for parent in disk_parents:
        try:
            entries = list(os.scandir(parent))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and (use := measure_disk(Path(entry.path))) is not None:
                disks.append(use)
    return HostSpace(
        total_bytes=host.f_blocks * host.f_frsize,
        free_bytes=host.f_bavail * host.f_frsize,
        disks=tuple(disks),
    )


def clamp(sandbox_dir: Path) -> int:
    """Take every free block of the sandbox's own filesystem with the ballast; returns the bytes
    it holds. Its writes fail with ENOSPC from here on (overwrites of its blocks still work)."""
    mount_point = sandbox_dir / MOUNT_NAME
    # the ballast is made through a directory fd of the disk's own root, checked to be on
    # another filesystem than the sandbox's directory: a disk unmounted meanwhile (a delete)
    # can never turn into a ballast that fills the data filesystem itself
    root = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(root).st_dev == os.stat(sandbox_dir).st_dev:
            raise OSError(errno.ENOTCONN, "the sandbox's disk is not mounted", str(mount_point))
        fd = os.open(
            BALLAST_NAME, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=root
        )
    finally:
        os.close(root)
    try:
        offset = os.fstat(fd).st_size
        chunk = _CHUNK_BYTES
        while chunk >= _MIN_CHUNK_BYTES:
            try:
                os.posix_fallocate(fd, offset, chunk)  # ext4 (ours) has fallocate: never emulated
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                chunk //= 2
                continue
            offset += chunk
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


def unclamp(sandbox_dir: Path) -> bool:
    """Remove the ballast; False when there was none."""
    try:
        os.unlink(sandbox_dir / MOUNT_NAME / BALLAST_NAME)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True
