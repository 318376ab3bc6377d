"""Facts about the host's CRIU, which runc uses for checkpoint and restore, and the freeze
that lets its dump start at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from atoll.runtime import cgroups
from atoll.runtime.commands import CommandFailed, CommandTimeout, run_sync

# how long a sandbox may take to freeze before the dump; past it CRIU freezes it itself (slower)
FREEZE_WAIT_S = 1.0
_FREEZE_POLL_S = 0.001

# lines CRIU logs as errors that say nothing about why an operation failed
_NOISE = ("Can't setup RLIMIT_NOFILE",)


@functools.cache
def works() -> bool:
    """A usable CRIU is installed (``scripts/setup-criu.sh`` builds one that fits the kernel)."""
    binary = shutil.which("criu")
    if binary is None:
        return False
    try:
        run_sync([binary, "check"], timeout=30)
    except (CommandFailed, CommandTimeout, OSError):
        return False
    return True


def log_errors(log: Path, limit: int = 5) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [
        line.split(": ", 1)[-1] for line in lines if "Error (" in line and not any(n in line for n in _NOISE)
    ]
    return "; ".join(errors[:limit])


async def freeze_for_dump(cgroup_parent: str, sandbox_id: str, *, timeout_s: float = FREEZE_WAIT_S) -> bool:
    """Freeze the sandbox's cgroup and wait (polling every millisecond) until it is frozen;
    True when this froze it (False: it was frozen already, e.g. by a snapshot, or it did not
    freeze in time and is thawed again, for CRIU to freeze as it would have).

    CRIU freezes the group itself, but it looks once right after asking and, finding the group
    still freezing (its tasks have yet to be scheduled to stop), sleeps 100 ms before looking
    again (criu/seize.c, ``freeze_processes``): a tenth of a second of every pause. A group
    frozen beforehand is taken as it is (as a snapshot's always was): CRIU thaws it once it has
    seized the tasks, and freezes it again after a dump with ``--leave-running`` (``thaw``)."""
    try:
        if cgroups.is_frozen(cgroup_parent, sandbox_id):
            return False
        cgroups.start_freeze(cgroup_parent, sandbox_id)
    except OSError:
        return False
    deadline = time.monotonic() + timeout_s
    try:
        while not cgroups.is_frozen(cgroup_parent, sandbox_id):
            if time.monotonic() > deadline:
                thaw(cgroup_parent, sandbox_id)
                return False
            await asyncio.sleep(_FREEZE_POLL_S)
    except OSError:  # the group went away
        thaw(cgroup_parent, sandbox_id)
        return False
    except BaseException:  # cancelled: the pause timed out
        thaw(cgroup_parent, sandbox_id)
        raise
    return True


@contextlib.asynccontextmanager
async def frozen_for_dump(cgroup_parent: str, sandbox_id: str) -> AsyncIterator[None]:
    """``freeze_for_dump`` for a dump inside; thawed afterwards if it froze it (the sandbox may
    run on: ``--leave-running``, a failed dump)."""
    froze = await freeze_for_dump(cgroup_parent, sandbox_id)
    try:
        yield
    finally:
        if froze:
            thaw(cgroup_parent, sandbox_id)


def thaw(cgroup_parent: str, sandbox_id: str) -> None:
    """Undo ``freeze_for_dump`` (best effort: after a dump without ``--leave-running`` the
    tasks, and maybe the group, are gone)."""
    cgroups.thaw(cgroup_parent, sandbox_id)
