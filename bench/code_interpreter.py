"""Code interpreter latency through the router (HTTPS, as the leap0 SDK calls it), next to
baselines measured in the same run.

For each runtime it starts its own `atoll serve` twice, without and with a warm pool, and for N
runs measures:
- create (system/code-interpreter:v0.1.0) -> first `1+1` result, cold and from the warm pool,
  against create (default template) -> `process/execute` of `python3 -c 'print(1+1)'`;
- the execute round trip of `1+1` in a warm context, against a direct `jupyter_client` round trip
  to the same kernel from inside the sandbox (what the service adds: HTTP, TLS, the router).

    python bench/code_interpreter.py [--runs 30] [--runtimes runc,runsc]
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

os.environ.setdefault("ATOLL_TEST_INSTANCE", "benchci")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atc")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.242.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import row
from tests._support.server import SANDBOX_DOMAIN, ServerProcess

TEMPLATE = "system/code-interpreter:v0.1.0"
# Run inside the sandbox with the template's Python: N execute round trips of `1+1` straight to
# the default context's kernel (its connection file), printed as JSON milliseconds.
DIRECT = r"""
import glob, json, sys, time
from jupyter_client import BlockingKernelClient
path = sorted(glob.glob(sys.argv[2]), key=lambda p: __import__("os").path.getmtime(p))[0]
client = BlockingKernelClient(connection_file=path)
client.load_connection_file()
client.start_channels()
client.wait_for_ready(timeout=30)
times = []
for i in range(int(sys.argv[1]) + 1):
    start = time.perf_counter()
    reply = client.execute_interactive("1+1", store_history=False, output_hook=lambda msg: None, timeout=30)
    if i:
        times.append((time.perf_counter() - start) * 1000)
    assert reply["content"]["status"] == "ok", reply
client.stop_channels()
print(json.dumps(times))
"""


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class Bench:
    def __init__(self, server: ServerProcess, ca_file: Path) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300)
        self.ca_file = ca_file

    def sandbox_client(self, sid: str) -> httpx.Client:
        url = f"https://{sid}.{SANDBOX_DOMAIN}:{self.server.router_port}"
        return httpx.Client(
            base_url=url, headers=self.server.headers, verify=str(self.ca_file), timeout=120, trust_env=False
        )

    def create(self, template: str | None = None) -> str:
        body = {"template_name": template} if template else {}
        created = self.http.post("/v1/sandbox", json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def delete(self, sid: str) -> None:
        self.http.delete(f"/v1/sandbox/{sid}/")

    def first_result(self) -> float:
        start = time.perf_counter()
        sid = self.create(TEMPLATE)
        with self.sandbox_client(sid) as sandbox:
            reply = sandbox.post("/execute", json={"code": "1+1"}).json()
        took = ms(start)
        assert reply["items"][0]["text"] == "2", reply
        self.delete(sid)
        return took

    def process_baseline(self) -> float:
        start = time.perf_counter()
        sid = self.create()
        out = self.http.post(
            f"/v1/sandbox/{sid}/process/execute", json={"command": "python3 -c 'print(1+1)'"}
        ).json()
        took = ms(start)
        assert out["stdout"] == "2\n", out
        self.delete(sid)
        return took

    def warm_ready(self) -> None:
        """Until the interpreter's own pool is full (health's sum also counts the default's)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pool = self.http.get("/v1/health").json()["warm_pools"].get(TEMPLATE)
            if pool is not None and pool["ready"] >= pool["size"]:
                return
            time.sleep(0.05)
        raise RuntimeError("the warm pool did not refill within 120 s")

    def round_trips(self, runs: int) -> tuple[list[float], list[float]]:
        sid = self.create(TEMPLATE)
        try:
            with self.sandbox_client(sid) as sandbox:
                for _ in range(3):
                    sandbox.post("/execute", json={"code": "1+1"}).raise_for_status()
                service = []
                for _ in range(runs):
                    start = time.perf_counter()
                    reply = sandbox.post("/execute", json={"code": "1+1"}).json()
                    service.append(ms(start))
                    assert reply["items"][0]["text"] == "2", reply
            command = f"/opt/atoll/venv/bin/python -c '{DIRECT}' {runs} '/run/atoll-ci/atoll-ci-*/k-*.json'"
            out = self.http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": command}).json()
            assert out["exit_code"] == 0, out
            return service, json.loads(out["stdout"])
        finally:
            self.delete(sid)

    def close(self) -> None:
        self.http.close()


def run_server(scratch: Path, runtime: str, warm: int) -> tuple[ServerProcess, Path]:
    server = ServerProcess(
        data_dir=scratch / f"server-{runtime}-{warm}",
        host="127.0.0.1",
        runtime=runtime,
        extra_args=("--warm-pool-size", str(warm)),
    )
    server.start()
    ca_file = scratch / f"ca-{runtime}-{warm}.pem"
    ca_file.write_bytes(httpx.get(f"{server.base_url}/v1/ca.pem", timeout=30).content)
    return server, ca_file


def measure(scratch: Path, runtime: str, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    server, ca_file = run_server(scratch, runtime, 0)
    bench = Bench(server, ca_file)
    try:
        bench.process_baseline()  # first boots warm the page cache, for both sides alike
        bench.first_result()
        results["baseline"] = [bench.process_baseline() for _ in range(runs)]
        results["cold"] = [bench.first_result() for _ in range(runs)]
        results["service"], results["direct"] = bench.round_trips(runs * 10)
    finally:
        bench.close()
        server.stop()
    server, ca_file = run_server(scratch, runtime, 2)
    bench = Bench(server, ca_file)
    try:
        bench.warm_ready()
        warm = []
        for _ in range(runs):
            bench.warm_ready()
            warm.append(bench.first_result())
        results["warm"] = warm
    finally:
        bench.close()
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runtimes", default="runc,runsc" if shutil.which("runsc") else "runc")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-ci-", dir="/var/tmp"))
    results = {}
    try:
        for runtime in args.runtimes.split(","):
            results[runtime] = measure(scratch, runtime, args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# code interpreter benchmark, {args.runs} runs per figure ({args.runs * 10} round trips)")
    for runtime, r in results.items():
        print(row(f"[{runtime}] baseline: create -> process python3 1+1", r["baseline"]))
        print(row(f"[{runtime}] cold: create -> first 1+1", r["cold"], r["baseline"]))
        print(row(f"[{runtime}] warm pool: create -> first 1+1", r["warm"], r["baseline"]))
        print(row(f"[{runtime}] baseline: jupyter_client 1+1", r["direct"]))
        print(row(f"[{runtime}] execute 1+1 via router+TLS", r["service"], r["direct"]))


if __name__ == "__main__":
    main()
