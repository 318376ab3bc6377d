"""Create/exec/delete cycles (200; 80 on gVisor) leave nothing behind: not on the host (the leak
checker), and not in the server (its open descriptors and children do not grow)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests._support import api
from tests._support.server import RUNTIME, ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]
# a gVisor cycle takes ~3x a runc one (59 s against 19 s for 200 in a CI run): 80 cycles there
# still run each gVisor step (runsc run, exec through the agent, delete) 80 times, and a
# descriptor the server kept per cycle would still be 80 > 10; what 200 adds (a leak of one per
# 9-20 cycles) is the server's own, and the OCI pass runs those 200.
CYCLES = 80 if RUNTIME == "runsc" else 200


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_create_exec_delete_cycles(http: httpx.Client, server: ServerProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    api.delete(http, api.create(http)["id"])  # warm up lazily opened files and connections
    fds_before = open_fds(pid)
    started = time.monotonic()
    for i in range(CYCLES):
        sid = api.create(http)["id"]
        assert api.run(http, sid, f"echo {i}")["stdout"] == f"{i}\n"
        api.delete(http, sid)
    elapsed = time.monotonic() - started
    time.sleep(1)
    assert open_fds(pid) <= fds_before + 10, (fds_before, open_fds(pid))
    assert elapsed < CYCLES * 3, f"{elapsed:.0f}s for {CYCLES} cycles"
