"""A snapshot freezes the sandbox only to catch up with what changed, not for the whole copy of
its disk layer (issue 15: ~90 s frozen for 300,000 files). A process inside stamps the time every
10 ms while a layer of many files is snapshotted: the longest silence (the freeze) is a small
part of the snapshot's time, and the restored fork holds every file."""

from __future__ import annotations

import time

import httpx
import pytest

from atoll.server.snapshot_copy import CLOCK_SLACK_NS
from tests._support import api

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

FILES = 40_000
FILE_BYTES = 4096
TICKER = """
cat > /root/ticker.py <<'PY'
import time
with open("/root/ticks", "a", buffering=1) as out:
    while True:
        out.write(f"{time.time()}\\n")
        time.sleep(0.01)
PY
nohup python3 /root/ticker.py >/dev/null 2>&1 &
sleep 0.5
"""


def test_the_sandbox_runs_during_most_of_a_snapshot(http: httpx.Client) -> None:
    if not http.get("/v1/health").json().get("checkpoint"):
        pytest.skip("snapshots need a checkpointing runtime on this host")
    sid = api.create(http, timeout=600)["id"]
    fork = None
    try:
        # files with contents: the copy writes them, the catching up only looks (an lstat each),
        # so what the freeze must not cover stays well apart from what it may (empty files made
        # the two close enough for a fast disk to put the freeze at half the snapshot)
        make = (
            "import os\n"
            f"for d in range(1, 41):\n"
            f"    os.makedirs(f'/root/many/{{d}}')\n"
            f"    for i in range({FILES // 40}):\n"
            f"        with open(f'/root/many/{{d}}/{{i}}', 'wb') as f:\n"
            f"            f.write(b'x' * {FILE_BYTES})\n"
        )
        api.run(http, sid, f"python3 - <<'PY'\n{make}PY", timeout=300)
        # files stamped within the clock slack before the snapshot count as changed and are
        # copied again while frozen: the last ~20,000 of them when it began right away
        time.sleep(CLOCK_SLACK_NS / 1e9 + 1.5)
        api.run(http, sid, TICKER)
        started = time.time()
        r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "many"}, timeout=600)
        ended = time.time()
        assert r.status_code == 201, r.text
        ticks = [float(t) for t in api.run(http, sid, "cat /root/ticks")["stdout"].split()]
        during = [t for t in ticks if started <= t <= ended]
        gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
        took_s, frozen_s = ended - started, max(gaps)
        print(f"snapshot took {took_s:.2f} s, frozen at most {frozen_s:.2f} s")
        # before: frozen for the copy of every file (nearly all of the snapshot's time)
        assert frozen_s < took_s / 2, (frozen_s, took_s)
        restored = http.post("/v1/snapshot/restore", json={"snapshot_name": "many"})
        assert restored.status_code in (200, 201), restored.text
        fork = restored.json()["id"]
        assert api.run(http, fork, "find /root/many -type f | wc -l")["stdout"].strip() == str(FILES)
        snapshot_id = r.json()["id"]
    finally:
        for each in (fork, sid):
            if each is not None:
                api.delete(http, each)
    assert http.delete(f"/v1/snapshot/{snapshot_id}").status_code == 204
