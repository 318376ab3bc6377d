"""Durable pause, resume, snapshot and restore latency by touched memory, against the freezer.

Starts its own `atoll serve` per checkpointing backend (runc + CRIU, and gVisor's runsc when it
is installed), and for sandboxes holding 10 MB, 100 MB and 1 GiB of touched memory measures
through the API: pause (checkpoint to disk, processes freed), resume (the first exec after it),
snapshot (source keeps running) and restore (a new sandbox from the snapshot, to its first
exec). Baseline in the same run on the same sandbox: the runtime's own pause / resume (the
cgroup freezer for runc, the sentry's pause for runsc), which keeps the memory resident.

    python bench/snapshots.py [--sizes 10,100,1024] [--runs 5] [--runtimes runc,runsc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench._stats import percentile
from tests._support.server import INSTANCE, ServerProcess

HOLD = (
    "nohup python3 -c 'import time; n = {size} << 20; b = bytearray(n); "
    'b[::4096] = bytes([1]) * len(range(0, n, 4096)); open("/tmp/ready", "w"); time.sleep(1e9)\' '
    ">/dev/null 2>&1 & while [ ! -e /tmp/ready ]; do sleep 0.05; done"
)


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def row(name: str, samples: list[float], baseline: list[float] | None, size_mib: int) -> str:
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    text = f"{name:<32} {size_mib:>5} MiB  n={len(samples):<3} p50={p50:9.1f} ms  p95={p95:9.1f} ms"
    text += f"  ({p50 / 1000 / (size_mib / 1024):6.2f} s/GiB)" if size_mib >= 100 else " " * 16
    if baseline:
        text += f"  in memory p50={percentile(baseline, 50):6.1f} ms"
    return text


def measure(http: httpx.Client, runtime: str, size_mib: int, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        k: [] for k in ("pause", "resume", "freeze", "thaw", "snapshot", "restore")
    }
    memory = max(512, ((size_mib + 400) // 2) * 2)
    runc = [runtime, "--root", f"/run/atoll/{INSTANCE}/{runtime}"]
    for run in range(runs):
        created = http.post("/v1/sandbox", json={"memory": min(memory, 8192), "timeout": 3600})
        created.raise_for_status()
        sid = created.json()["id"]
        try:
            http.post(
                f"/v1/sandbox/{sid}/process/execute",
                json={"command": HOLD.format(size=size_mib), "timeout": 300},
            ).raise_for_status()
            start = time.perf_counter()
            subprocess.run([*runc, "pause", sid], check=True)
            out["freeze"].append(ms(start))
            start = time.perf_counter()
            subprocess.run([*runc, "resume", sid], check=True)
            out["thaw"].append(ms(start))
            start = time.perf_counter()
            paused = http.post(f"/v1/sandbox/{sid}/pause")
            out["pause"].append(ms(start))
            assert paused.json()["pause_kind"] == "checkpoint", paused.text
            start = time.perf_counter()
            http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"}).raise_for_status()
            out["resume"].append(ms(start))
            start = time.perf_counter()
            snap = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": f"bench-{sid}-{run}"})
            out["snapshot"].append(ms(start))
            snap.raise_for_status()
            start = time.perf_counter()
            fork = http.post("/v1/snapshot/restore", json={"snapshot_name": f"bench-{sid}-{run}"})
            fork.raise_for_status()
            http.post(
                f"/v1/sandbox/{fork.json()['id']}/process/execute", json={"command": "true"}
            ).raise_for_status()
            out["restore"].append(ms(start))
            http.delete(f"/v1/sandbox/{fork.json()['id']}/")
            http.delete(f"/v1/sandbox/{sid}/")
            http.delete(f"/v1/snapshot/{snap.json()['id']}")
        finally:
            http.delete(f"/v1/sandbox/{sid}/")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,1024", help="MiB of touched memory, comma-separated")
    parser.add_argument("--runs", type=int, default=5)
    default = "runc,runsc" if shutil.which("runsc") else "runc"
    parser.add_argument("--runtimes", default=default, help="checkpointing backends, comma-separated")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    results: dict[str, dict[int, dict[str, list[float]]]] = {}
    try:
        for runtime in args.runtimes.split(","):
            server = ServerProcess(data_dir=scratch / runtime, host="127.0.0.1", runtime=runtime)
            results[runtime] = {}
            try:
                server.start()
                with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http:
                    for size in (int(s) for s in args.sizes.split(",")):
                        runs = args.runs if size < 1024 else max(2, args.runs // 2)
                        results[runtime][size] = measure(http, runtime, size, runs)
            except Exception:
                print(server.log_tail(40), file=sys.stderr)
                raise
            finally:
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("# snapshot benchmark (runc: CRIU; runsc: gVisor's own), baseline: pause/resume in memory")
    for runtime, by_size in results.items():
        for size, r in by_size.items():
            print(row(f"[{runtime}] pause (checkpoint)", r["pause"], r["freeze"], size))
            print(row(f"[{runtime}] resume (restore+exec)", r["resume"], r["thaw"], size))
            print(row(f"[{runtime}] snapshot (keeps running)", r["snapshot"], None, size))
            print(row(f"[{runtime}] restore -> first exec", r["restore"], None, size))


if __name__ == "__main__":
    main()
