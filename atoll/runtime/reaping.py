"""Atoll's server is a child subreaper, like a container engine's shim.

Runtimes start sandbox processes and exit (``run --detach``, ``exec --detach``, ``restore -d``);
their orphans would otherwise go to the host's PID 1, which may reap late, and a pid namespace's
init cannot finish exiting while one of its processes is an unreaped zombie outside it (a
delete then waits seconds). As subreaper the server inherits them and reaps exactly those pids
it knows (never ``waitpid(-1)``, which would steal the event loop's own children)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os

from atoll.runtime import procfs

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def try_reap(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True when it is gone (or was never ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


async def exited(pid: int, timeout: float | None = None) -> None:
    """Wait (without blocking the loop) until ``pid`` has exited, without reaping it; returns at
    ``timeout`` regardless."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, on_exit)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def reap_when_exits(pid: int, timeout: float = 10.0) -> None:
    """Wait (without blocking the loop) until ``pid`` exits, and reap it if it is ours."""
    await exited(pid, timeout)
    try_reap(pid)


def _zombie_children(names: frozenset[str] | None) -> set[tuple[int, int]]:
    """(pid, start time) of our zombie children whose command name is in ``names`` (None: all)."""
    found = set()
    for task in os.scandir("/proc/self/task"):
        try:
            with open(f"{task.path}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for stat in procfs.processes(pids):
            if stat.state == "Z" and (names is None or stat.comm in names):
                found.add((stat.pid, stat.start_ticks))
    return found


async def reap_orphaned_zombies(names: frozenset[str], settle: float = 1.0) -> None:
    """Reap zombies a runtime's own helper processes left to us: ``crun run --detach`` forks a
    child that starts the container and exits after its parent did, so it is orphaned to us
    with nobody to know its pid. A zombie seen twice, ``settle`` seconds apart, is not one the
    event loop's child watcher is about to reap (those are reaped within milliseconds)."""
    first = _zombie_children(names)
    if not first:
        return
    await asyncio.sleep(settle)
    for pid, _ in first & _zombie_children(names):
        try_reap(pid)


class ZombieSweep:
    """Reaps, once per reap cycle, every zombie child seen in the cycle before too: orphans that a
    runtime killed mid-way left to us (``runc``, ``runc:[2:INIT]``, a sandbox's agent whose
    ``runc`` died before handing it over), whose pids nobody else knows. A child the server waits
    for itself is reaped by its waiter on the event loop within milliseconds of its exit, long
    before the next cycle, which runs on the same loop (issue 15: no zombie outlives a cycle)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def sweep(self) -> list[int]:
        now = _zombie_children(None)
        reaped = [pid for pid, _ in now & self._seen if try_reap(pid)]
        self._seen = {(pid, start) for pid, start in now if pid not in reaped}
        return reaped
