"""Burst creation and capacity accounting: many creates at once all succeed without
serialising, and creates beyond the host's budget get 503 with Retry-After at once."""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess, side_server

pytestmark = [pytest.mark.privileged]


@pytest.mark.usefixtures("no_leaks")
def test_burst_of_30_concurrent_creates_all_succeed(server: ServerProcess, http: httpx.Client) -> None:
    def create(_: int) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/v1/sandbox", json={"memory": 512}, headers=server.headers, timeout=300
        )

    with ThreadPoolExecutor(max_workers=30) as pool:
        responses = list(pool.map(create, range(30)))
    failures = [r.text for r in responses if r.status_code != 201]
    assert not failures, failures
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 30
    health = http.get("/v1/health").json()
    assert health["capacity"]["memory_mib_used"] >= 30 * 512
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert all(pool.map(lambda sid: api.run(http, sid, "echo ok")["stdout"] == "ok\n", ids))
        list(pool.map(lambda sid: api.delete(http, sid), ids))


def test_creates_beyond_the_budget_get_503_with_retry_after() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-cap-", dir="/var/tmp"))
    # a budget of roughly 1.1 GiB of memory: two 512 MiB sandboxes fit, a third does not
    host_mib = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 - 1024
    small = side_server(
        data_dir,
        "cap",
        1,
        extra_args=("--memory-overcommit", f"{1100 / host_mib:.6f}", "--netns-pool-size", "0"),
    )
    small.start()
    try:
        with httpx.Client(base_url=small.base_url, headers=small.headers, timeout=120) as http:
            first, second = api.create(http, memory=512)["id"], api.create(http, memory=512)["id"]
            refused = http.post("/v1/sandbox", json={"memory": 512})
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) > 0
            assert "capacity" in refused.json()["message"]
            # a sandbox paused by checkpoint frees its share; a frozen one keeps it
            paused = http.post(f"/v1/sandbox/{first}/pause").json()
            if paused["pause_kind"] == "checkpoint":
                third = api.create(http, memory=512)["id"]
                resume = http.post(f"/v1/sandbox/{first}/process/execute", json={"command": "true"})
                assert resume.status_code == 503  # no room to bring its memory back
                api.delete(http, third)
            api.delete(http, first)
            api.delete(http, second)
            assert http.get("/v1/health").json()["capacity"]["memory_mib_used"] == 0
    finally:
        small.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
