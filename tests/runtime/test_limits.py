"""Resource limits a sandbox is created with reach its cgroups. (Attempts to exhaust the host,
such as fork bombs and memory balloons, are in tests/security/test_exhaustion.py.)"""

from __future__ import annotations

import httpx
import pytest

from tests._support import api
from tests._support.server import INSTANCE

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def test_cpu_quota_follows_vcpu(http: httpx.Client) -> None:
    sid = api.create(http, vcpu=2)["id"]
    try:
        quota = api.cgroup_file(INSTANCE, sid, v1=("cpu", "cpu.cfs_quota_us"), v2="cpu.max")
        assert quota.read_text().split()[0] in ("200000",)
        assert api.run(http, sid, "nproc")["exit_code"] == 0
    finally:
        api.delete(http, sid)
