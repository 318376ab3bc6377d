"""Escape attempts that would stall a sandbox's commands by stopping its PID 1 (the agent), and
the server's watchdogs (``OCIBackend._wake_agent``, ``gvisor_exec.Executor.wake_agent``) for a stop
that gets past the kernel's rules (or, under gVisor, that the sentry lets through).
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
    # gVisor delivers SIGSTOP to PID 1: test_sigstop_the_agent
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


@pytest.mark.attempt("stop PID 1 (the agent) with SIGSTOP, then run commands")
def test_sigstop_the_agent(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    """Linux ignores it (a pid namespace's init); gVisor's sentry delivers it, and the server's
    watchdog (``gvisor_exec.Executor.wake_agent``) continues the agent: commands keep running
    at once, during the stop (the stopping command's own result) and after it."""
    started = time.monotonic()
    stop = api.run(http, victim, "kill -STOP 1; echo sent", timeout=10)
    assert stop["stdout"] == "sent\n", stop
    assert time.monotonic() - started < 5, "the stopping command waited for the stopped agent"
    # a stop that lands between two commands, from a process the agent no longer waits for
    api.run(http, victim, "(sleep 0.5; kill -STOP 1) >/dev/null 2>&1 &")
    time.sleep(1.5)
    for _ in range(3):
        started = time.monotonic()
        result = api.run(http, victim, "echo still-here; grep '^State:' /proc/1/status", timeout=10)
        assert result["stdout"].startswith("still-here\n"), result
        assert time.monotonic() - started < 5, "the next command waited for the agent"
    state = result["stdout"].split()[-2]
    assert state not in ("T", "t"), result
    how = "the kernel ignores it: a pid namespace's init gets no unhandled signal from inside"
    if GVISOR:
        how = "the sentry stops the agent; the server's watchdog sends it SIGCONT when a command waits"
    blocked(f"{how} (PID 1 state afterwards {state})")


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
