"""Desktop sandbox latency through the router (HTTPS, as the leap0 SDK calls it), next to
baselines measured in the same run.

For each runtime it starts its own `atoll serve` and measures:
- create (system/desktop:v0.1.0) -> `/api/status` running (what `wait_until_ready` waits for),
  cold (no warm pool), N runs; then the same from a warm pool of one booted desktop (a second
  server with `--warm-desktop-pool-size 1`; each create waits for the pool to refill first, so
  every one is a claim: the pool refills in the background, one boot at a time);
- a full-screen PNG screenshot (`GET /api/screenshot`, 1440x900) through the router, against
  `xwd -root` of the same screen run inside the sandbox (the timing taken inside, so it is only
  the X round trip and the dump, no HTTP, no PNG encoding);
- the host memory of one idle desktop sandbox, from its cgroup (memory.current);
- where the last cold start went: the desktop service's own timeline (its log inside the
  sandbox: when it started after the sandbox's PID 1, when each process started and was ready).

    python bench/desktop.py [--runs 5] [--shots 30] [--runtimes runc,runsc]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "benchdt")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "abd")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.243.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import row
from tests._support.server import SANDBOX_DOMAIN, ServerProcess

TEMPLATE = "system/desktop:v0.1.0"
DESKTOP_LOG = "/run/atoll-desktop/desktop.log"
WARM_ARGS = ("--warm-pool-size", "1", "--warm-template", TEMPLATE, "--warm-desktop-pool-size", "1")
# N timed `xwd -root` dumps inside the sandbox, printed as JSON milliseconds
XWD = (
    'python3 -c "import subprocess, time, json; t=[]\n'
    "for _ in range({n}):\n"
    "    s=time.perf_counter(); subprocess.run(['xwd','-root','-silent','-out','/dev/null'], check=True)\n"
    '    t.append((time.perf_counter()-s)*1000)\nprint(json.dumps(t))"'
)


class Bench:
    def __init__(self, server: ServerProcess, ca_file: Path) -> None:
        self.server = server
        self.ca_file = ca_file
        self.api = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300)

    def desk(self, sid: str) -> httpx.Client:
        base = f"https://{sid}.{SANDBOX_DOMAIN}:{self.server.router_port}"
        return httpx.Client(base_url=base, headers=self.server.headers, verify=str(self.ca_file), timeout=60)

    def create_ready(self) -> tuple[str, float]:
        start = time.perf_counter()
        r = self.api.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2})
        r.raise_for_status()
        sid = str(r.json()["id"])
        with self.desk(sid) as desk:
            while desk.get("/api/status").json().get("status") != "running":
                time.sleep(0.02)
        return sid, (time.perf_counter() - start) * 1000

    def screenshots(self, sid: str, n: int) -> tuple[list[float], list[float]]:
        shots = []
        with self.desk(sid) as desk:
            desk.get("/api/screenshot").raise_for_status()
            for _ in range(n):
                start = time.perf_counter()
                r = desk.get("/api/screenshot")
                r.raise_for_status()
                shots.append((time.perf_counter() - start) * 1000)
        r = self.api.post(f"/v1/sandbox/{sid}/process/execute", json={"command": XWD.format(n=n)})
        r.raise_for_status()
        return shots, json.loads(r.json()["stdout"])

    def timeline(self, sid: str) -> list[str]:
        r = self.api.post(f"/v1/sandbox/{sid}/process/execute", json={"command": f"cat {DESKTOP_LOG}"})
        r.raise_for_status()
        lines = str(r.json()["stdout"]).splitlines()
        return [line.split(" desktop INFO ", 1)[-1] for line in lines if " desktop INFO " in line]

    def memory_mib(self, sid: str) -> float | None:
        # cgroup v2 (memory.current) or v1 (the memory controller's usage_in_bytes)
        for name in ("memory.current", "memory.usage_in_bytes"):
            for path in Path("/sys/fs/cgroup").rglob(name):
                if sid in str(path.parent):
                    return int(path.read_text()) / (1 << 20)
        return None

    def wait_for_warm(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        # the desktop's own pool: health's warm_pool_ready also counts the default template's
        while self.api.get("/v1/health").json()["warm_pools"].get(TEMPLATE, {}).get("ready", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the warm pool did not fill")
            time.sleep(0.5)

    def delete(self, sid: str) -> None:
        self.api.delete(f"/v1/sandbox/{sid}/")

    def close(self) -> None:
        self.api.close()


def start(scratch: Path, name: str, runtime: str, extra_args: tuple[str, ...] = ()) -> Bench:
    server = ServerProcess(
        data_dir=scratch / f"server-{name}-{runtime}",
        host="127.0.0.1",
        runtime=runtime,
        extra_args=extra_args,
    )
    server.start()
    ca_file = scratch / f"ca-{name}-{runtime}.pem"
    ca_file.write_bytes(httpx.get(f"{server.base_url}/v1/ca.pem", timeout=30).content)
    return Bench(server, ca_file)


def measure_warm(scratch: Path, runtime: str, runs: int) -> list[float]:
    bench = start(scratch, "warm", runtime, WARM_ARGS)
    warm = []
    try:
        for _ in range(runs):
            bench.wait_for_warm()
            time.sleep(1)  # the refill's last steps (its quiet wait) are over
            sid, took = bench.create_ready()
            warm.append(took)
            bench.delete(sid)
    finally:
        bench.close()
        bench.server.stop()
    return warm


def measure(scratch: Path, runtime: str, runs: int, shots: int) -> dict[str, object]:
    bench = start(scratch, "cold", runtime)
    server = bench.server
    results: dict[str, object] = {}
    try:
        sid, _ = bench.create_ready()  # the first boot warms the page cache
        bench.delete(sid)
        cold = []
        for _ in range(runs):
            sid, took = bench.create_ready()
            cold.append(took)
            results["timeline"] = bench.timeline(sid)
            bench.delete(sid)
        results["cold"] = cold
        sid, _ = bench.create_ready()
        time.sleep(5)  # idle
        results["memory_mib"] = bench.memory_mib(sid)
        results["shot"], results["xwd"] = bench.screenshots(sid, shots)
        bench.delete(sid)
    finally:
        bench.close()
        server.stop()
    results["warm"] = measure_warm(scratch, runtime, runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--shots", type=int, default=30)
    parser.add_argument("--runtimes", default="runc,runsc")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-desktop-", dir="/var/tmp"))
    try:
        print(f"# desktop benchmark, {args.runs} creates and {args.shots} screenshots per runtime")
        for runtime in args.runtimes.split(","):
            if runtime == "runsc" and shutil.which("runsc") is None:
                continue
            r = measure(scratch, runtime, args.runs, args.shots)
            print(row(f"[{runtime}] cold: create -> ready", r["cold"]))  # type: ignore[arg-type]
            print(row(f"[{runtime}] warm pool: create -> ready", r["warm"], r["cold"]))  # type: ignore[arg-type]
            print(row(f"[{runtime}] baseline: xwd -root inside", r["xwd"]))  # type: ignore[arg-type]
            print(row(f"[{runtime}] PNG screenshot via router", r["shot"], r["xwd"]))  # type: ignore[arg-type]
            print(f"[{runtime}] idle desktop memory: {r['memory_mib']} MiB (its cgroup)")
            print(f"[{runtime}] the last cold start, from the desktop service's log:")
            for line in r["timeline"]:  # type: ignore[attr-defined]
                print(f"[{runtime}]   {line}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
