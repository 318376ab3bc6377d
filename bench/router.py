"""Sandbox router throughput and latency, next to a direct connection to the same server.

Starts its own `atoll serve` (its own instance name, subnet and ports, so it can run beside the
tests), creates one sandbox, starts a server in it, then runs `wrk` (Debian package) twice per
scenario against the same in-sandbox server: directly at the sandbox's address from the host,
and through the router on loopback (`Host: {id}.sbx.localhost:{port}` plus the API key, the
way an `invoke_url` request arrives). Throughput comes from a run with many connections,
latency percentiles from a run with one connection (so queueing does not hide the router's
own cost), in the same run for both paths.

Scenarios:
  keepalive   a small asyncio HTTP/1.1 server (keep-alive, 23-byte answers): the router's own
              per-request cost dominates
  http.server `python3 -m http.server` (HTTP/1.0: one connection per request)

    python bench/router.py [--duration 10] [--connections 32] [--scenario keepalive]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# our own host resources, apart from a test run's (read when tests._support.server is imported)
os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.240.0.0/16")

from tests._support import api
from tests._support.server import SANDBOX_DOMAIN, ServerProcess

PORT = 8080
KEEPALIVE_SERVER = r"""
import asyncio, sys
BODY = b"hello from the sandbox\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # GETs only: no bodies
            self.buffer = self.buffer[end + 4:]
            self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Server, "0.0.0.0", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()

asyncio.run(main())
"""
BACKGROUND = ">/dev/null 2>&1 &"
START = {
    "keepalive": f"cat > /tmp/ka.py <<'EOF'\n{KEEPALIVE_SERVER}\nEOF\n"
    f"nohup python3 /tmp/ka.py {PORT} {BACKGROUND}",
    "http.server": f"cd /tmp && echo hello > index.html && nohup python3 -m http.server {PORT} {BACKGROUND}",
}
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50": %d, "p95": %d, "p99": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass
class Run:
    rps: float
    p50: float  # microseconds
    p95: float
    p99: float
    errors: int

    def cells(self) -> str:
        return f"{self.rps:>10,.0f}  {self.p50:>8.0f}  {self.p95:>8.0f}  {self.p99:>8.0f}  {self.errors:>6}"


def wrk(
    url: str, headers: dict[str, str], *, connections: int, threads: int, duration: int, script: Path
) -> Run:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Run(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50=data["p50"],
        p95=data["p95"],
        p99=data["p99"],
        errors=data["errors"] + data["non2xx"],
    )


def wait_ready(router: str, headers: dict[str, str]) -> None:
    for _ in range(200):
        try:
            if httpx.get(router, headers=headers, timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the in-sandbox server did not come up")


def scenario(
    http: httpx.Client, server: ServerProcess, name: str, args: argparse.Namespace, script: Path
) -> bool:
    sandbox = str(api.create(http, memory=1024)["id"])
    try:
        api.run(http, sandbox, START[name])
        ip = api.sandbox_ip(http, sandbox)
        direct = f"http://{ip}:{PORT}/"
        routed = f"{server.router_url}/"
        route_headers = {"Host": f"{sandbox}.{SANDBOX_DOMAIN}:{server.router_port}", **server.headers}
        wait_ready(routed, route_headers)
        load = {
            "connections": args.connections,
            "threads": args.threads,
            "duration": args.duration,
            "script": script,
        }
        single = {"connections": 1, "threads": 1, "duration": max(3, args.duration // 2), "script": script}
        # warm both paths (caches, first connections), then measure them back to back
        wrk(direct, {}, **{**single, "duration": 1})
        wrk(routed, route_headers, **{**single, "duration": 1})
        results = {
            ("direct", "load"): wrk(direct, {}, **load),
            ("routed", "load"): wrk(routed, route_headers, **load),
            ("direct", "single"): wrk(direct, {}, **single),
            ("routed", "single"): wrk(routed, route_headers, **single),
        }
    finally:
        http.delete(f"/v1/sandbox/{sandbox}/")
    print(f"\nscenario {name}: GET / from {'the asyncio keep-alive server' if name == 'keepalive' else name}")
    print(f"  {'':<26}{'req/s':>10}  {'p50 us':>8}  {'p95 us':>8}  {'p99 us':>8}  {'errors':>6}")
    for kind, label in (("load", f"{args.connections} connections"), ("single", "1 connection")):
        for path in ("direct", "routed"):
            print(f"  {path + ', ' + label:<26}{results[path, kind].cells()}")
    ratio = results["routed", "load"].rps / results["direct", "load"].rps
    added = {
        q: getattr(results["routed", "single"], q) - getattr(results["direct", "single"], q)
        for q in ("p50", "p95", "p99")
    }
    ok_ratio, ok_latency = ratio >= 0.8, added["p50"] < 1000
    print(f"  throughput routed/direct: {ratio:.2f}  (target >= 0.80: {'met' if ok_ratio else 'NOT met'})")
    print(
        f"  added latency (1 connection): p50 {added['p50']:+.0f} us, p95 {added['p95']:+.0f} us, "
        f"p99 {added['p99']:+.0f} us  (target p50 < 1000 us: {'met' if ok_latency else 'NOT met'})"
    )
    errors = sum(r.errors for r in results.values())
    if errors:
        print(f"  {errors} failed requests")
    return ok_ratio and ok_latency and not errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per loaded wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenario", choices=[*START, "all"], default="all")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-bench-router-", dir="/var/tmp"))
    server = ServerProcess(data_dir=data_dir)
    server.start()
    ok = True
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_REPORT)
            script.flush()
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
                print(f"router bench: {os.cpu_count()} CPUs, sandbox vcpu=1, wrk -t{args.threads}, ", end="")
                print(f"{args.duration}s loaded runs, {max(3, args.duration // 2)}s single-connection runs")
                for name in START if args.scenario == "all" else [args.scenario]:
                    ok = scenario(http, server, name, args, Path(script.name)) and ok
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
