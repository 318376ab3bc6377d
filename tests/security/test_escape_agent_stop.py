"""Escape attempts that would stall a sandbox's commands by stopping its PID 1 (the agent), and
the server's watchdog (``OCIBackend._wake_agent``) for a stop that gets past the kernel's rules.
(Tracing it is ``test_escape_agent.py::test_ptrace_the_agent``.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import INSTANCE
from tests.security._inside import py_json
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

STOP_PID1 = """
import json, os, signal, time
sent = {}
for name in %r:
    try:
        os.kill(1, getattr(signal, name))
        sent[name] = "sent"
    except OSError as exc:
        sent[name] = exc.__class__.__name__
time.sleep(0.3)
state = [l.split()[1] for l in open("/proc/1/status") if l.startswith("State:")][0]
print(json.dumps({"sent": sent, "state": state}))
"""


@pytest.mark.attempt("stop PID 1 (the agent) with SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU")
def test_stop_the_agent(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    # gVisor delivers SIGSTOP to PID 1: test_sigstop_the_agent_under_gvisor
    signals = ["SIGTSTP", "SIGTTIN", "SIGTTOU"] + ([] if GVISOR else ["SIGSTOP"])
    seen = py_json(http, victim, STOP_PID1 % (signals,))
    assert seen["state"] not in ("T", "t"), seen
    started = time.monotonic()
    result = api.run(http, victim, "echo still-here", timeout=10)
    assert result["stdout"] == "still-here\n", result
    assert time.monotonic() - started < 5, "the next command waited for the agent"
    how = "the kernel ignores them: a pid namespace's init gets no unhandled signal from inside"
    if GVISOR:
        how = "the agent handles SIGTSTP, SIGTTIN and SIGTTOU (a no-op): the sentry would stop it"
    blocked(f"{how} (PID 1 state {seen['state']})")


@pytest.mark.attempt("stop a gVisor sandbox's PID 1 (the agent) with SIGSTOP")
def test_sigstop_the_agent_under_gvisor() -> None:
    if not GVISOR:
        pytest.skip("Linux ignores SIGSTOP to a pid namespace's init from inside (test_stop_the_agent)")
    # Seen by hand (issue 16): `kill -STOP 1` stops the agent; every later command waits 30 s
    # and answers 503, and deleting the sandbox then leaves runsc processes behind. Not run: it
    # wedges the server's state for the rest of the suite.
    pytest.xfail("gVisor delivers SIGSTOP to PID 1 from inside; the gVisor backend has no watchdog yet")


def _agent_host_pid(sandbox_id: str) -> int:
    return int(Path(f"/run/atoll/{INSTANCE}/{runtime_dir()}/{sandbox_id}.init.pid").read_text())


def runtime_dir() -> str:
    for name in ("runc", "crun"):
        if Path(f"/run/atoll/{INSTANCE}/{name}").is_dir():
            return name
    raise AssertionError("no OCI runtime state dir")


def _state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return "?"


def test_watchdog_continues_a_stopped_agent(http: httpx.Client, victim: str) -> None:
    """Defence in depth: the agent stopped from the host (as a way past those rules would), the
    next command still runs at once, and the agent runs again."""
    if GVISOR:
        pytest.skip("gVisor's PID 1 lives in the sentry: the host has no agent process to stop")
    pid = _agent_host_pid(victim)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while _state(pid) != "T":
        assert time.monotonic() < deadline, _state(pid)
        time.sleep(0.05)
    started = time.monotonic()
    result = api.run(http, victim, "echo woke", timeout=10)
    assert result["stdout"] == "woke\n", result
    assert time.monotonic() - started < 5, "the command waited for the stopped agent"
    assert _state(pid) in ("S", "R"), _state(pid)
