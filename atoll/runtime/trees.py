"""Trees a sandbox made, seen from the host: how deep and how big one call may go, and their
removal at any depth.

A sandbox decides how deep its directories go (``mkdir d; cd d`` in a loop), so nothing on the
host walks them by recursion: Python's stack (about 1,000 frames) would end in a
``RecursionError``, a 500, or a server that cannot start. Walks and copies are iterative with a
depth and an entry-count limit (400 past them); removal has no limit at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from atoll.runtime.confined import DIR_FLAGS, RENAME_NOREPLACE, libc

MAX_DEPTH = 256  # levels below its top that a walk or a copy goes (a tree answer nests this deep)
COPY_MAX_ENTRIES = 100_000
MAX_DIR_ENTRIES = 200_000  # entries of one directory a walk reads (and holds) before refusing
# a removal holds one fd per level down to this depth; deeper directories are moved up to the
# top first (a rename), so a tree of any depth costs a bounded number of fds and no recursion
REMOVE_HELD_FDS = 64
REMOVE_DEADLINE_S = 600.0


def remove_tree(parent_fd: int, name: str, *, deadline_s: float = REMOVE_DEADLINE_S) -> None:
    """``rm -rf parent_fd/name`` without recursion and without following any link: every
    directory is opened relative to its parent's fd with ``O_NOFOLLOW``, so a sandbox swapping a
    directory for a symlink mid-removal gets its symlink removed, nothing outside. Trees of any
    depth: past ``REMOVE_HELD_FDS`` levels, a directory is renamed up to the top and removed from
    there. A tree that keeps growing under the removal (its sandbox is writing) fails after
    ``deadline_s`` with EBUSY rather than running forever."""
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    deadline = time.monotonic() + deadline_s
    top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    # each level: (its fd, its name in the level above, subdirectories still to remove)
    stack: list[tuple[int, str, list[str]]] = [(top, name, [])]
    hoisted = itertools.count()
    try:
        while stack:
            if time.monotonic() > deadline:
                raise OSError(errno.EBUSY, "the tree kept changing during its removal", name)
            fd, _, pending = stack[-1]
            if not pending:
                pending.extend(_unlink_files(fd))
                if not pending:  # empty now: remove it from its parent
                    _, level_name, _ = stack.pop()
                    os.close(fd)
                    if stack:
                        _rmdir(stack[-1][0], stack[-1][2], level_name)
                    continue
            child = pending.pop()
            if len(stack) >= REMOVE_HELD_FDS and (moved := _hoist(fd, child, top, hoisted)) is not None:
                if moved:
                    stack[0][2].append(moved)  # removed from the top when its turn comes
                continue
            try:
                child_fd = os.open(child, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as exc:  # swapped for a link or a file meanwhile: it is one now
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
                continue
            stack.append((child_fd, child, []))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _rmdir(parent_fd: int, pending: list[str], name: str) -> None:
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        pending.append(name)  # something was added meanwhile: go through it again


def _unlink_files(fd: int) -> list[str]:
    """Remove everything in the directory but subdirectories; returns those."""
    directories: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    directories.append(entry.name)
                else:
                    os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                continue
    return directories


def _hoist(fd: int, child: str, top: int, counter: Iterator[int]) -> str | None:
    """Move ``fd/child`` up into the top directory under a fresh name and return that name
    ("" when it vanished meanwhile); None when the filesystem cannot (an overlay directory with
    a part in a lower layer: EXDEV), and the caller goes down into it instead."""
    for _ in range(1000):
        new = f".atoll-rm-{next(counter)}"
        old = child.encode("utf-8", "surrogateescape")
        rc = libc.renameat2(fd, old, top, new.encode(), RENAME_NOREPLACE)
        if rc == 0:
            return new
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            continue
        if err == errno.ENOENT:
            return ""
        if err in (errno.EXDEV, errno.EINVAL, errno.EPERM):
            return None
        raise OSError(err, os.strerror(err), child)
    raise OSError(errno.EEXIST, "no free name to move a directory to", child)


def remove_host_tree(path: Path) -> None:
    """Remove a host directory that holds a sandbox-made tree (a snapshot's layer, a sandbox's
    directory), however deep; a missing one is fine."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_tree(parent, path.name)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)
