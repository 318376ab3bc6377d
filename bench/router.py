"""Sandbox router throughput and latency, next to a direct connection to the same server.

Starts its own `atoll serve` (its own instance name, a free subnet and free ports, so it can run
beside the tests), creates a sandbox per scenario, starts a server in it, then drives it with
`wrk` (Debian package) both directly, at the sandbox's address from the host, and through the
router on loopback (`Host: {id}.sbx.localhost:{port}` plus the API key, the way an `invoke_url`
request arrives). Throughput comes from runs with many connections; latency percentiles from
runs with one connection, so queueing does not hide what the router adds. Direct and routed
runs alternate (`--repeat` times each) and the medians are reported, because a shared machine's
load drifts between runs.

Scenarios (the in-sandbox server):
  stdlib       http.server.ThreadingHTTPServer speaking HTTP/1.1 keep-alive
               (tests/router/sandbox_app.py, GET /hello): a typical small Python app server
  asyncio      a bare asyncio protocol that answers every request with 23 fixed bytes: the
               server does nothing, so this shows the router's own cost at its most visible

Not measured: a new connection per request (`python3 -m http.server`, or `Connection: close`).
At thousands of new connections a second from the host to one sandbox port, connects stall
for seconds on the direct path too (`wrk` straight at the sandbox: "unable to connect ...
timed out"; most likely the sandbox's TIME_WAIT entries meeting reused host ports), so such a
run measures the kernel, not the router. The router adds one TCP connect to the sandbox per
such request: +0.3 to +0.5 ms p50 in earlier runs with `python3 -m http.server`.

    python bench/router.py [--duration 8] [--connections 32] [--repeat 3] [--scenario stdlib]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def unused_subnet() -> str:
    """A 10.N.0.0/16 no route on this host falls into (other Atoll instances included)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    taken = {line.split(".")[1] for line in routes.splitlines() if line.startswith("10.")}
    return next(f"10.{n}.0.0/16" for n in range(199, 255) if str(n) not in taken)


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# our own host resources, apart from a test run's (read when tests._support.server is imported)
os.environ.setdefault("ATOLL_TEST_INSTANCE", "rbench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "arb")
os.environ.setdefault("ATOLL_TEST_SUBNET", unused_subnet())

from tests._support import api  # noqa: E402
from tests._support.server import SANDBOX_DOMAIN, ServerProcess  # noqa: E402

PORT = 8080
ASYNCIO_SERVER = r"""
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
STDLIB_SERVER = (ROOT / "tests" / "router" / "sandbox_app.py").read_text()
BACKGROUND = ">/dev/null 2>&1 &"


@dataclass(frozen=True)
class Scenario:
    start: str
    path: str
    max_connections: int | None = None


SCENARIOS = {
    "stdlib": Scenario(
        f"cat > /tmp/app.py <<'EOF'\n{STDLIB_SERVER}\nEOF\nnohup python3 /tmp/app.py {PORT} {BACKGROUND}",
        "/hello",
    ),
    "asyncio": Scenario(
        f"cat > /tmp/ka.py <<'EOF'\n{ASYNCIO_SERVER}\nEOF\nnohup python3 /tmp/ka.py {PORT} {BACKGROUND}", "/"
    ),
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
    errors: int  # connect, read, write errors and timeouts (wrk's limit: 2 s)
    non2xx: int

    def cells(self) -> str:
        failed = f"{self.errors}/{self.non2xx}"
        return f"{self.rps:>10,.0f}  {self.p50:>8.0f}  {self.p95:>8.0f}  {self.p99:>8.0f}  {failed:>9}"


def median_run(runs: list[Run]) -> Run:
    return Run(
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p95=statistics.median(r.p95 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        errors=sum(r.errors for r in runs),
        non2xx=sum(r.non2xx for r in runs),
    )


def wrk(
    url: str, headers: dict[str, str], *, connections: int, threads: int, duration: int, script: Path
) -> Run:
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s", "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(lines[-1])
    return Run(
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50=data["p50"],
        p95=data["p95"],
        p99=data["p99"],
        errors=data["errors"],
        non2xx=data["non2xx"],
    )


def wait_ready(url: str, headers: dict[str, str], timeout: float = 20.0) -> None:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, headers=headers, timeout=5, trust_env=False)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"the in-sandbox server did not come up: {last}")


def run_scenario(
    http: httpx.Client, server: ServerProcess, name: str, args: argparse.Namespace, script: Path
) -> bool:
    spec = SCENARIOS[name]
    connections = min(args.connections, spec.max_connections or args.connections)
    sandbox = str(api.create(http, memory=1024)["id"])
    try:
        api.run(http, sandbox, spec.start)
        direct = f"http://{api.sandbox_ip(http, sandbox)}:{PORT}{spec.path}"
        routed = f"{server.router_url}{spec.path}"
        route_headers = {"Host": f"{sandbox}.{SANDBOX_DOMAIN}:{server.router_port}", **server.headers}
        wait_ready(routed, route_headers)
        targets = {"direct": (direct, {}), "routed": (routed, route_headers)}
        kinds = {
            "load": {"connections": connections, "threads": args.threads, "duration": args.duration},
            "single": {"connections": 1, "threads": 1, "duration": max(2, args.duration // 2)},
        }
        for url, headers in targets.values():  # warm up: caches, first connections
            wrk(url, headers, connections=connections, threads=1, duration=1, script=script)
        runs: dict[tuple[str, str], list[Run]] = {(p, k): [] for p in targets for k in kinds}
        for i in range(args.repeat):
            for kind, options in kinds.items():
                order = list(targets) if i % 2 == 0 else list(reversed(targets))
                for path in order:
                    url, headers = targets[path]
                    runs[path, kind].append(wrk(url, headers, script=script, **options))
    finally:
        http.delete(f"/v1/sandbox/{sandbox}/")
    result = {key: median_run(value) for key, value in runs.items()}
    print(f"\nscenario {name}: GET {spec.path} (median of {args.repeat} alternating runs)")
    print(f"  {'':<26}{'req/s':>10}  {'p50 us':>8}  {'p95 us':>8}  {'p99 us':>8}  {'err/non2xx':>9}")
    for kind, label in (("load", f"{connections} connections"), ("single", "1 connection")):
        for path in targets:
            print(f"  {path + ', ' + label:<26}{result[path, kind].cells()}")
    ratio = result["routed", "load"].rps / result["direct", "load"].rps
    added = {
        q: getattr(result["routed", "single"], q) - getattr(result["direct", "single"], q)
        for q in ("p50", "p95", "p99")
    }
    ok_ratio, ok_latency = ratio >= 0.8, added["p50"] < 1000
    print(f"  throughput routed/direct: {ratio:.2f}  (target >= 0.80: {'met' if ok_ratio else 'NOT met'})")
    print(
        f"  added latency, 1 connection: p50 {added['p50']:+.0f} us, p95 {added['p95']:+.0f} us, "
        f"p99 {added['p99']:+.0f} us  (target p50 < 1000 us: {'met' if ok_latency else 'NOT met'})"
    )
    errors = sum(r.errors + r.non2xx for r in result.values())
    if errors:
        print(f"  {errors} failed requests (socket errors or timeouts / answers other than 2xx)")
    return ok_ratio and ok_latency and not errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per loaded wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per path")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-bench-router-", dir="/var/tmp"))
    server = ServerProcess(data_dir=data_dir)
    server.start()
    measured = True  # targets missed are reported in the output; only an unmeasured run fails
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(WRK_REPORT)
            script.flush()
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
                load = os.getloadavg()[0]
                print(
                    f"router bench: {os.cpu_count()} CPUs (load average {load:.1f} at start), sandbox vcpu=1,"
                )
                single = max(2, args.duration // 2)
                print(f"  wrk: {args.duration}s runs with many connections, {single}s with one")
                for name in SCENARIOS if args.scenario == "all" else [args.scenario]:
                    try:
                        run_scenario(http, server, name, args, Path(script.name))
                    except RuntimeError as exc:
                        print(f"\nscenario {name}: not measured: {exc}")
                        measured = False
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
