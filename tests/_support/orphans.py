"""The test process as a child subreaper that reaps gVisor's orphans, as a host's PID 1 should.

A server killed with SIGKILL (tests/reliability: crashes mid-burst, restarts) leaves the runtime
processes of its sandboxes (gVisor's sentry and gofer, which ``runsc run --detach`` orphaned to
the server) to the nearest subreaper above it, else to the host's PID 1. The restarted server
adopts the sandboxes; when it deletes one, those processes die as zombies of whoever adopted
them, and ``runsc delete`` polls until they are gone, giving up after 2 s. A PID 1 that reaps
late (this machine's does) made that 2 s per deleted sandbox: about 60 s of the crash test's clean-up
under gVisor. Here they come to this process, and a thread reaps them at once. Only zombies
named like gVisor's processes (``exe``): a child the tests wait for themselves is never taken."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from atoll.runtime import procfs, reaping

SWEEP_INTERVAL_S = 0.05  # well inside runsc delete's 100 ms polls
GVISOR_PROCESS = "exe"  # runsc re-executes itself (/proc/self/exe) as sentry, gofer and stubs


def start() -> None:
    reaping.become_subreaper()
    threading.Thread(target=_reap_forever, name="gVisor orphan reaper", daemon=True).start()


def _zombie_children() -> list[int]:
    pids: list[str] = []
    for task in os.scandir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"{task.path}/children") as children:
            pids += children.read().split()
    return [s.pid for s in procfs.processes(pids) if s.state == "Z" and s.comm == GVISOR_PROCESS]


def _reap_forever() -> None:
    while True:
        for pid in _zombie_children():
            reaping.try_reap(pid)
        time.sleep(SWEEP_INTERVAL_S)
