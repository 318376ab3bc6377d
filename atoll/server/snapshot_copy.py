"""A snapshot's copy of a sandbox's disk layer, in two passes so that the sandbox is frozen only
for what changed (issue 15: frozen ~90 s for the whole copy of 300,000 files).

1. ``pre_copy``, the sandbox running: the layer's filesystem is synced first (so that a later
   write through a memory mapping faults again and stamps its file), then ``cp -a`` copies it all.
2. ``catch_up``, the sandbox frozen: one iterative walk of the layer (an ``lstat`` per entry,
   no data read for what did not change) brings the copy up to date. An entry is copied again
   when its inode changed since a moment before pass 1 began: its ``ctime``, which no process
   can set (``touch -d`` and ``utime`` set mtime and atime only, and stamp ctime with the
   present). Entries gone from the layer are removed from the copy, new ones copied, and a
   changed directory gets its own metadata (mode, owner, times, extended attributes such as
   overlayfs's opaque marker) again.

Hard links between an entry copied again and one that was not are not kept (the copy holds two
files with the same contents). The comparison trusts the host's clock: a backward step of more
than ``CLOCK_SLACK_NS`` during a snapshot could hide a change. The copy never follows a link:
it walks only directories that are directories (not links) on both sides, and ``cp -a``
copies links as links."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from atoll.runtime.commands import CommandFailed, c_locale, reported_errnos, run
from atoll.runtime.confined import libc
from atoll.runtime.trees import remove_host_tree

# file timestamps come from a coarse clock (a few ms behind): changes stamped up to this long
# before pass 1 began count as changed
CLOCK_SLACK_NS = 1_000_000_000
ARGV_BATCH_BYTES = 64 * 1024  # source paths per `cp` call, well below the kernel's ARG_MAX
COPY_TIMEOUT_S = 3600.0  # the snapshot's own timeout (``snapshot_timeout_s``) is the real bound


@dataclass
class CatchUp:
    """What pass 2 found: entries looked at, and the copies and removals it made."""

    checked: int = 0
    removed: int = 0
    refreshed: int = 0  # directories whose own metadata was copied again
    to_copy: dict[Path, list[Path]] = field(default_factory=dict)  # copy's dir -> source entries
    # the copy's directories whose entries change: their source's (atime, mtime), put back last
    times: dict[Path, tuple[int, int]] = field(default_factory=dict)

    @property
    def copied(self) -> int:
        return sum(len(sources) for sources in self.to_copy.values())


def start_time_ns() -> int:
    """The moment pass 1 counts from, taken before it begins."""
    return time.time_ns() - CLOCK_SLACK_NS


async def pre_copy(source: Path, copy: Path) -> None:
    """Pass 1: the whole layer, the sandbox running (the copy may be inconsistent: pass 2 fixes it)."""
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:  # written-back pages fault (and stamp ctime) on their next write
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(source))
    finally:
        os.close(fd)
    argv = ["cp", "-a", "--reflink=auto", str(source), str(copy)]
    rc, _, stderr = await run(argv, timeout=COPY_TIMEOUT_S, check=False, env=c_locale())
    # the sandbox runs: what it removed while being copied is missing (ENOENT: pass 2 sees to
    # it), any other error (no space, a path too long) is the snapshot's
    codes = reported_errnos(stderr.decode(errors="replace"))
    if rc != 0 and (not codes or any(code != errno.ENOENT for code in codes)):
        raise CommandFailed(argv, rc, stderr)


async def catch_up(source: Path, copy: Path, since_ns: int) -> CatchUp:
    """Pass 2, the sandbox frozen: compare (in a thread), then copy what changed."""
    found = await asyncio.to_thread(compare, source, copy, since_ns)
    for target, sources in found.to_copy.items():
        for batch in _batches(sources):
            argv = ["cp", "-a", "--reflink=auto", "--remove-destination", "-t", str(target), "--"]
            await run([*argv, *map(str, batch)], timeout=COPY_TIMEOUT_S, env=c_locale())
    for target, (atime_ns, mtime_ns) in found.times.items():  # as the layer has them
        os.utime(target, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    return found


def compare(source: Path, copy: Path, since_ns: int) -> CatchUp:
    """Walk both trees (iteratively: a sandbox decides how deep they go). Removes from ``copy``
    what changed or is gone, refreshes changed directories' metadata, and returns what to copy."""
    found = CatchUp()
    pending: list[Path] = [Path()]  # relative directories that are real directories on both sides
    while pending:
        relative = pending.pop()
        ours, theirs = copy / relative, source / relative
        own = os.lstat(theirs)
        if own.st_ctime_ns >= since_ns:
            _copy_metadata(theirs, ours, own)
            found.refreshed += 1
            found.times[ours] = (own.st_atime_ns, own.st_mtime_ns)
        with os.scandir(ours) as entries:
            copied = {entry.name: entry.is_dir(follow_symlinks=False) for entry in entries}
        seen: set[str] = set()
        with os.scandir(theirs) as entries:
            for entry in entries:
                found.checked += 1
                seen.add(entry.name)
                info = entry.stat(follow_symlinks=False)
                changed = info.st_ctime_ns >= since_ns
                is_dir = stat.S_ISDIR(info.st_mode)
                if entry.name in copied:
                    if is_dir and copied[entry.name]:
                        pending.append(relative / entry.name)  # its own metadata: when visited
                        continue
                    if not changed and not is_dir and not copied[entry.name]:
                        continue  # the same inode as pass 1 saw it
                    remove_host_tree(ours / entry.name)  # changed, or no longer the same type
                found.to_copy.setdefault(ours, []).append(Path(entry.path))
                found.times[ours] = (own.st_atime_ns, own.st_mtime_ns)
        for name in copied.keys() - seen:  # gone from the layer since pass 1
            remove_host_tree(ours / name)
            found.removed += 1
            found.times[ours] = (own.st_atime_ns, own.st_mtime_ns)
    return found


def _copy_metadata(source: Path, target: Path, info: os.stat_result) -> None:
    """A directory's own metadata (its entries are compared one by one)."""
    os.chown(target, info.st_uid, info.st_gid, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(info.st_mode), follow_symlinks=False)
    wanted = {name: os.getxattr(source, name, follow_symlinks=False) for name in _xattrs(source)}
    for name in set(_xattrs(target)) - set(wanted):
        with contextlib.suppress(OSError):
            os.removexattr(target, name, follow_symlinks=False)
    for name, value in wanted.items():
        os.setxattr(target, name, value, follow_symlinks=False)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _batches(paths: list[Path]) -> list[list[Path]]:
    batches: list[list[Path]] = [[]]
    size = 0
    for path in paths:
        length = len(os.fsencode(path)) + 1
        if batches[-1] and size + length > ARGV_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += length
    return batches
