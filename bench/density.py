"""Density: host memory per idle sandbox, and create latency with many sandboxes alive.

Starts its own `atoll serve` (default runtime), creates N idle sandboxes (512 MiB limit each,
over-commit raised so the budget admits them), and measures the host's MemAvailable before and
after (so the figure includes every per-sandbox cost: processes, cgroups, mounts, netns, veth,
page cache of state files) and the create -> first exec latency of 20 more sandboxes at that
load, next to the same figure on an empty host in the same run.

    python bench/density.py [--sandboxes 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench._stats import row
from tests._support.server import ServerProcess


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable")


def create_and_exec(http: httpx.Client) -> tuple[str, float]:
    start = time.perf_counter()
    r = http.post("/v1/sandbox", json={"memory": 512, "timeout": 3600})
    r.raise_for_status()
    sid = r.json()["id"]
    http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"}).raise_for_status()
    return sid, (time.perf_counter() - start) * 1000


def probe(http: httpx.Client, n: int = 20) -> list[float]:
    times = []
    for _ in range(n):
        sid, elapsed = create_and_exec(http)
        times.append(elapsed)
        http.delete(f"/v1/sandbox/{sid}/")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sandboxes", type=int, default=500)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    server = ServerProcess(
        data_dir=scratch / "server",
        host="127.0.0.1",
        extra_args=("--memory-overcommit", "64", "--cpu-overcommit", "1024"),
    )
    ids: list[str] = []
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
            empty = probe(http)
            time.sleep(2)
            before = mem_available_mib()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                for sid, _ in pool.map(lambda _: create_and_exec(http), range(args.sandboxes)):
                    ids.append(sid)
            fill_s = time.perf_counter() - started
            time.sleep(5)  # let the pool refill and the page cache settle
            after = mem_available_mib()
            loaded = probe(http)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda sid: http.delete(f"/v1/sandbox/{sid}/"), ids))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    per_sandbox = (before - after) / args.sandboxes
    print(f"# density benchmark, {args.sandboxes} idle sandboxes (default runtime)")
    print(
        f"host memory per idle sandbox: {per_sandbox:.2f} MiB (MemAvailable {before:.0f} -> {after:.0f} MiB)"
    )
    print(f"creating all {args.sandboxes} (8 at a time): {fill_s:.1f} s")
    print(row("create -> first exec, empty host", empty))
    print(row(f"create -> first exec, {args.sandboxes} alive", loaded, empty))


if __name__ == "__main__":
    main()
