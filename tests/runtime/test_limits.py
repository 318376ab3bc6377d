"""Resource limits hold inside the sandbox and the host is unaffected."""

from __future__ import annotations

import httpx
import pytest

from tests._support import api
from tests._support.server import INSTANCE, PIDS_LIMIT

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def test_memory_limit_kills_inside_and_sandbox_stays_usable(http: httpx.Client) -> None:
    sid = api.create(http, memory=512)["id"]
    try:
        hog = api.run(http, sid, "python3 -c 'b = bytearray(900 * 1024 * 1024); print(len(b))'", timeout=60)
        assert hog["exit_code"] == 137  # SIGKILL from the OOM killer of the sandbox's cgroup
        assert hog["stdout"] == ""
        limit = api.cgroup_file(INSTANCE, sid, v1=("memory", "memory.limit_in_bytes"), v2="memory.max")
        assert int(limit.read_text()) == 512 * 1024 * 1024
        assert api.run(http, sid, "echo still here")["stdout"] == "still here\n"
    finally:
        api.delete(http, sid)


def test_fork_bomb_is_stopped_by_the_pids_limit(http: httpx.Client) -> None:
    sid = api.create(http)["id"]
    try:
        bomb = api.run(http, sid, "f() { f | f & }; f; sleep 300", timeout=6)
        assert bomb["exit_code"] == 124  # the timeout ends the bomb's whole session
        events = api.cgroup_file(INSTANCE, sid, v1=("pids", "pids.events"), v2="pids.events")
        assert int(events.read_text().split()[1]) > 0  # the limit was hit
        current = api.cgroup_file(INSTANCE, sid, v1=("pids", "pids.current"), v2="pids.current")
        assert int(current.read_text()) <= PIDS_LIMIT
        assert api.run(http, sid, "echo alive", timeout=30)["stdout"] == "alive\n"
    finally:
        api.delete(http, sid)


def test_cpu_quota_follows_vcpu(http: httpx.Client) -> None:
    sid = api.create(http, vcpu=2)["id"]
    try:
        quota = api.cgroup_file(INSTANCE, sid, v1=("cpu", "cpu.cfs_quota_us"), v2="cpu.max")
        assert quota.read_text().split()[0] in ("200000",)
        assert api.run(http, sid, "nproc")["exit_code"] == 0
    finally:
        api.delete(http, sid)
