"""Burst creation: N concurrent creates through the real API against a fresh server.

For each runtime: a fresh `atoll serve` (its pools filled, as a server is a moment after
start-up), then N creates sent at once. Printed: how long until all N were running, how many
failed, and the create latency p50/p95/p99. Baseline from the same run: N concurrent bare
`crun run --detach` of the same template rootfs, each on an overlay bundle prepared beforehand
(no network, no disk, no record): the floor the OCI runtime itself sets on this host.

    python bench/burst.py [--count 100] [--runtimes crun,runc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoll.runtime import overlay
from atoll.runtime.spec import SandboxSpec
from bench._bare import BareBundles
from bench._stats import row
from tests._support.server import ServerProcess

TARGET_S = 3.0


def bare_burst(count: int, scratch: Path) -> tuple[float, list[float]]:
    """`crun run --detach` of the default template, `count` at once; (wall seconds, latencies)."""
    bundles = BareBundles(scratch)
    root = scratch / "crun-root"
    specs = []
    try:
        for i in range(count):
            specs.append(bundles.make(f"benchburst{i}", "atoll_bench_burst"))
        return asyncio.run(_start_all(specs, root))
    finally:
        for spec in specs:
            argv = ["crun", "--root", str(root), "delete", "--force", spec.sandbox_id]
            subprocess.run(argv, capture_output=True, check=False)
            overlay.unmount(spec.rootfs)
        subprocess.run(["rmdir", *Path("/sys/fs/cgroup").glob("*/atoll_bench_burst")], capture_output=True)


async def _start_all(specs: list[SandboxSpec], root: Path) -> tuple[float, list[float]]:
    async def start(spec: SandboxSpec) -> float:
        began = time.perf_counter()
        argv = ["crun", "--root", str(root), "run", "--detach", "--bundle", str(spec.sandbox_dir)]
        proc = await asyncio.create_subprocess_exec(
            *argv, spec.sandbox_id, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert await proc.wait() == 0, f"crun run {spec.sandbox_id} failed"
        return (time.perf_counter() - began) * 1000

    began = time.perf_counter()
    latencies = await asyncio.gather(*(start(s) for s in specs))
    return time.perf_counter() - began, list(latencies)


class Connection:
    """One keep-alive HTTP/1.1 connection, written for this benchmark: with 100 requests in
    flight, httpx's connection pool spends about 10 ms of the client's CPU per request (100
    concurrent health checks took 1-2 s through it, 40 ms this way), which would make the
    burst measure the client instead of the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: str) -> None:
        self.reader, self.writer, self.headers = reader, writer, headers

    @classmethod
    async def open(cls, server: ServerProcess) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        headers = "".join(f"{k}: {v}\r\n" for k, v in server.headers.items())
        return cls(reader, writer, f"Host: 127.0.0.1:{server.port}\r\n{headers}")

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\n{self.headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        length = int(fields.get("content-length", "0"))
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def api_burst(server: ServerProcess, count: int) -> tuple[float, list[float], dict[str, int]]:
    """`count` creates at once, each on its own connection (opened beforehand: the burst
    measures creates, not TCP handshakes); (seconds until the last one was running, latencies
    of the successful ones, failures by kind). Every sandbox is deleted afterwards."""
    connections = [await Connection.open(server) for _ in range(count)]
    failures: dict[str, int] = {}
    created: list[str] = []

    def failed(kind: str) -> None:
        failures[kind] = failures.get(kind, 0) + 1

    async def create(connection: Connection) -> float | None:
        began = time.perf_counter()
        try:
            status, body = await connection.request("POST", "/v1/sandbox", b"{}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            failed(type(exc).__name__)
            return None
        elapsed = (time.perf_counter() - began) * 1000
        if status != 201 or json.loads(body).get("state") != "running":
            failed(f"HTTP {status}")
            return None
        created.append(json.loads(body)["id"])
        return elapsed

    try:
        began = time.perf_counter()
        results = await asyncio.gather(*(create(c) for c in connections))
        wall = time.perf_counter() - began
    finally:
        for connection in connections:
            connection.close()
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        # each one is really there and running
        for sid in created:
            if (await http.get(f"/v1/sandbox/{sid}/")).json().get("state") != "running":
                failed("not running afterwards")
        semaphore = asyncio.Semaphore(8)

        async def delete(sid: str) -> None:
            async with semaphore:
                await http.delete(f"/v1/sandbox/{sid}/")

        await asyncio.gather(*(delete(sid) for sid in created))
    return wall, [r for r in results if r is not None], failures


def wait_for_pools(server: ServerProcess, timeout: float = 120) -> dict[str, Any]:
    """A fresh server's pools fill in the background; the burst starts once they are full."""
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.base_url}/v1/health", timeout=10).json()
        pools = {k: int(v) for k, v in health.items() if k.endswith("_pool_ready")}
        time.sleep(1.0)
        again: dict[str, Any] = httpx.get(f"{server.base_url}/v1/health", timeout=10).json()
        if pools and pools == {k: int(again[k]) for k in pools} and all(pools.values()):
            return again
    return health


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--runtimes", default="crun,runc")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-burst-", dir="/var/tmp"))
    results = {}
    pools: dict[str, str] = {}
    try:
        bare_wall, bare_latency = bare_burst(args.count, scratch / "bare")
        for runtime in args.runtimes.split(","):
            server = ServerProcess(
                data_dir=scratch / f"server-{runtime}",
                host="127.0.0.1",
                runtime=runtime,
                # the server's own pool defaults, not the test harness's smaller ones
                extra_args=("--warm-pool-size", "2", "--netns-pool-size", "4"),
            )
            try:
                server.start()
                health = wait_for_pools(server)
                pools[runtime] = ", ".join(f"{k} {v}" for k, v in health.items() if k.endswith("_pool_ready"))
                results[runtime] = asyncio.run(api_burst(server, args.count))
            finally:
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n = args.count
    print(f"# burst benchmark: {n} concurrent creates through the API, default template, fresh server")
    print(f"baseline: {n} concurrent crun run --detach: all started in {bare_wall:.2f} s")
    print(row("baseline: crun run --detach", bare_latency))
    for runtime, (wall, latency, failures) in results.items():
        failed = sum(failures.values())
        verdict = "met" if wall < TARGET_S and not failed else "NOT met"
        why = f" ({', '.join(f'{k}: {v}' for k, v in failures.items())})" if failures else ""
        print(
            f"[{runtime}] {n} concurrent creates: all running in {wall:.2f} s"
            f" ({wall / bare_wall:.2f}x baseline), {failed} failed{why};"
            f" target < {TARGET_S:g} s, none failed: {verdict}"
        )
        print(f"[{runtime}]   pools at the start: {pools[runtime]}")
        print(row(f"[{runtime}] create latency", latency, bare_latency))
    if any(failures for _, _, failures in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
