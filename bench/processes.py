"""Live processes through the real API: how soon streamed output arrives, and how fast.

Starts its own `atoll serve` per runtime (the default OCI runtime, and gVisor's runsc when it is
installed), one sandbox each, and measures over N runs:

- first stdout byte of `echo hi` through `process/execute/stream` (request sent -> first
  `stdout` event parsed), next to `process/execute` of the same command (request -> answer) in
  the same run: the baseline;
- event latency: a background process prints its clock every 50 ms; each line's arrival at the
  client minus the time in it (same host, same clock);
- watch latency: a file created inside every 50 ms, named after the clock; its ``create``
  event's arrival through ``filesystem/watch`` minus that time;
- throughput: `yes | head -c SIZE` streamed through `execute/stream`, next to the same command
  writing to /dev/null inside the sandbox (`process/execute`), in MB/s of the command's output:
  read by the SDK's decoder (SSE + JSON, as `on_stdout` gets it), and read raw (the HTTP body's
  bytes only: what the server and the transport deliver, without the Python client's parsing).

    python bench/processes.py [--runs 50] [--runtimes runc,runsc] [--mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoll.sdk._sse import SSEDecoder
from bench._stats import row
from tests._support.server import ServerProcess


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def events(response: httpx.Response) -> Iterator[dict[str, object]]:
    decoder = SSEDecoder()
    for chunk in response.iter_raw():
        for data in decoder.feed(chunk):
            yield json.loads(data)


def first_byte(http: httpx.Client, sid: str, runs: int) -> tuple[list[float], list[float]]:
    streamed, plain = [], []
    for _ in range(runs + 1):
        start = time.perf_counter()
        with http.stream(
            "POST", f"/v1/sandbox/{sid}/process/execute/stream", json={"command": "echo hi"}
        ) as r:
            for event in events(r):
                if event["type"] == "stdout":
                    streamed.append(ms(start))
                    assert event["data"] == "hi\n", event
                if event["type"] == "exit":
                    break
        start = time.perf_counter()
        out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
        plain.append(ms(start))
        assert out["stdout"] == "hi\n", out
    return streamed[1:], plain[1:]  # the first of each warms caches


def event_latency(http: httpx.Client, sid: str, runs: int) -> list[float]:
    command = "while true; do date +%s%N; sleep 0.05; done"
    pid = http.post(f"/v1/sandbox/{sid}/process/start", json={"command": command}).json()["pid"]
    latencies: list[float] = []
    try:
        with http.stream("GET", f"/v1/sandbox/{sid}/process/{pid}/events") as r:
            for event in events(r):
                arrived_ns = time.time_ns()
                for line in str(event.get("data", "")).split():
                    latencies.append((arrived_ns - int(line)) / 1e6)
                if len(latencies) > runs:
                    break
    finally:
        http.delete(f"/v1/sandbox/{sid}/process/{pid}")
    return latencies[1:]


def watch_latency(http: httpx.Client, sid: str, runs: int) -> list[float]:
    """A background loop creates a file named after its clock every 50 ms; each file's
    ``create`` event at the client minus the time in its name (``filesystem/watch``)."""
    http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "rm -rf /tmp/wbench; mkdir /tmp/wbench"})
    command = "while true; do : > /tmp/wbench/$(date +%s%N); sleep 0.05; done"
    latencies: list[float] = []
    params = {"path": "/tmp/wbench"}
    with http.stream("GET", f"/v1/sandbox/{sid}/filesystem/watch", params=params) as r:
        pid = http.post(f"/v1/sandbox/{sid}/process/start", json={"command": command}).json()["pid"]
        try:
            for event in events(r):
                arrived_ns = time.time_ns()
                name = str(event.get("path", "")).rsplit("/", 1)[-1]
                if event["type"] == "create" and name.isdigit():
                    latencies.append((arrived_ns - int(name)) / 1e6)
                if len(latencies) > runs:
                    break
        finally:
            http.delete(f"/v1/sandbox/{sid}/process/{pid}")
    return latencies[1:]


def raw_throughput(http: httpx.Client, sid: str, mib: int) -> float:
    """MB/s of the command's output through ``execute/stream``, the body read but not parsed."""
    size = mib << 20
    body = {"command": f"yes | head -c {size}", "timeout": 600}
    wire, tail = 0, b""
    start = time.perf_counter()
    with http.stream("POST", f"/v1/sandbox/{sid}/process/execute/stream", json=body) as r:
        for chunk in r.iter_raw():
            wire += len(chunk)
            tail = (tail + chunk)[-200:]
    streamed_s = time.perf_counter() - start
    assert b'"type":"exit"' in tail and wire > size, (wire, tail)
    return size / streamed_s / 1e6


def throughput(http: httpx.Client, sid: str, mib: int) -> tuple[float, float]:
    """MB/s streamed to the client, and MB/s of the same command into /dev/null inside."""
    size = mib << 20
    command = f"yes | head -c {size}"
    received = 0
    start = time.perf_counter()
    with http.stream(
        "POST", f"/v1/sandbox/{sid}/process/execute/stream", json={"command": command, "timeout": 600}
    ) as r:
        for event in events(r):
            if event["type"] == "stdout":
                received += len(str(event["data"]))
    streamed_s = time.perf_counter() - start
    assert received == size, (received, size)
    start = time.perf_counter()
    out = http.post(
        f"/v1/sandbox/{sid}/process/execute", json={"command": command + " > /dev/null", "timeout": 600}
    ).json()
    inside_s = time.perf_counter() - start
    assert out["exit_code"] == 0, out
    return size / streamed_s / 1e6, size / inside_s / 1e6


def default_runtimes() -> str:
    return "runc,runsc" if shutil.which("runsc") else "runc"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--runtimes", default=default_runtimes())
    parser.add_argument("--mib", type=int, default=256, help="streamed for the throughput figure")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    lines = [f"# processes benchmark, {args.runs} runs per figure, default template"]
    try:
        for runtime in args.runtimes.split(","):
            server = ServerProcess(data_dir=scratch / f"server-{runtime}", host="127.0.0.1", runtime=runtime)
            try:
                server.start()
                with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http:
                    # an hour to live: the default 300 s ends a slow run (a loaded host) mid-stream
                    sid = http.post("/v1/sandbox", json={"timeout": 3600}).json()["id"]
                    try:
                        streamed, plain = first_byte(http, sid, args.runs)
                        latency = event_latency(http, sid, args.runs)
                        watched = watch_latency(http, sid, args.runs)
                        streamed_mbs, inside_mbs = throughput(http, sid, args.mib)
                        raw_mbs = raw_throughput(http, sid, args.mib)
                    finally:
                        http.delete(f"/v1/sandbox/{sid}/")
            finally:
                server.stop()
            lines += [
                row(f"[{runtime}] execute (echo hi), baseline", plain),
                row(f"[{runtime}] stream: first stdout byte", streamed, plain),
                row(f"[{runtime}] event latency (inside -> client)", latency),
                row(f"[{runtime}] watch latency (file created inside -> client)", watched),
                f"[{runtime}] throughput, {args.mib} MiB of `yes`: streamed {streamed_mbs:.0f} MB/s, "
                f"to /dev/null inside {inside_mbs:.0f} MB/s ({streamed_mbs / inside_mbs:.2f}x)",
                f"[{runtime}] throughput, {args.mib} MiB of `yes` read raw (body bytes, not parsed): "
                f"{raw_mbs:.0f} MB/s ({raw_mbs / inside_mbs:.2f}x)",
            ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
