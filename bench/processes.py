"""Live processes through the real API: how soon streamed output arrives, and how fast.

Starts its own `atoll serve` per runtime (the default OCI runtime, and gVisor's runsc when it is
installed), one sandbox each, and measures over N runs:

- first stdout byte of `echo hi` through `process/execute/stream` (request sent -> first
  `stdout` event decoded), in the framed binary form the SDK asks for and in SSE (the spec's
  default), next to `process/execute` of the same command (request -> answer) in the same run:
  the baseline;
- event latency: a background process prints its clock every 20 ms; each line's arrival at the
  client (framed stream, the SDK's decoder) minus the time in it (same host, same clock);
- watch latency: a file created inside every 50 ms, named after the clock; its ``create``
  event's arrival through ``filesystem/watch`` minus that time;
- throughput: `yes | head -c SIZE` streamed through `execute/stream` in the framed form and
  decoded to text events by the SDK's decoder (median of 3), next to the same command writing
  to /dev/null inside the sandbox (`process/execute`), in MB/s of the command's output; then
  the SDK's `process.execute(on_stdout=...)`, which also keeps all of it for its result; and a
  smaller run through SSE (the spec's default form) decoded as its clients do (SSE + JSON).

Every wait is bounded (a latency figure that cannot be had in time is reported with the runs
it got; a throughput run that gets no byte for 30 s is reported as a stall), and the servers and
sandboxes are removed on every way out (an exception, Ctrl-C, SIGTERM).

    python bench/processes.py [--runs 50] [--runtimes runc,runsc] [--mib 1024] [--gvisor-mib 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "bench")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "atb")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.241.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atoll import Client
from atoll.sdk._frames import FRAMES_MEDIA_TYPE, FrameDecoder
from atoll.sdk._sse import SSEDecoder
from bench._stats import row
from tests._support.server import ServerProcess

FIGURE_DEADLINE_S = 60.0  # one latency figure's whole sampling
# a throughput run that gets no byte for this long is reported as stalled, not waited for
STALL_S = 30.0
STREAM_TIMEOUT = httpx.Timeout(600, read=STALL_S)
MIN_RATE_BPS = 2e6  # a throughput stream slower than this overall is reported as stalled
STALLS: Counter[str] = Counter()  # requests that got no byte for STALL_S, by figure
SSE_MIB = 128  # the SSE throughput run (several times slower than the framed form)
FRAMES = {"accept": FRAMES_MEDIA_TYPE}


class Stalled(Exception):
    """A request that went past its deadline (keepalives kept the read timeout from firing)."""


def chunks(response: httpx.Response, seconds: float) -> Iterator[bytes]:
    """The body's chunks, until ``seconds`` after now (checked on each, keepalives too)."""
    deadline = time.monotonic() + seconds
    for chunk in response.iter_raw():
        if time.monotonic() > deadline:
            raise Stalled
        yield chunk


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def sse_events(response: httpx.Response, seconds: float = STALL_S) -> Iterator[dict[str, object]]:
    decoder = SSEDecoder()
    for chunk in chunks(response, seconds):
        for data in decoder.feed(chunk):
            yield json.loads(data)


def first_byte(http: httpx.Client, sid: str, runs: int) -> tuple[list[float], list[float], list[float]]:
    """ms to the first stdout event of `echo hi`: framed, SSE; and `process/execute` of it."""
    framed: list[float] = []
    sse: list[float] = []
    plain: list[float] = []
    deadline = time.monotonic() + FIGURE_DEADLINE_S
    for _ in range(runs + 1):
        if time.monotonic() > deadline:
            break
        for samples, measure_once in ((framed, _first_framed), (sse, _first_sse), (plain, _plain)):
            try:
                samples.append(measure_once(http, sid))
            except (httpx.TimeoutException, Stalled):
                STALLS[measure_once.__name__.strip("_")] += 1
    return framed[1:], sse[1:], plain[1:]  # the first of each warms caches


def _first_framed(http: httpx.Client, sid: str) -> float:
    start = time.perf_counter()
    path = f"/v1/sandbox/{sid}/process/execute/stream"
    with http.stream("POST", path, json={"command": "echo hi"}, headers=FRAMES) as r:
        decoder = FrameDecoder()
        for chunk in chunks(r, STALL_S):
            got = [e for e in decoder.feed(chunk) if e.type == "stdout"]
            if got:
                assert got[0].data == "hi\n", got
                return ms(start)
    raise AssertionError("no stdout")


def _first_sse(http: httpx.Client, sid: str) -> float:
    start = time.perf_counter()
    with http.stream("POST", f"/v1/sandbox/{sid}/process/execute/stream", json={"command": "echo hi"}) as r:
        for event in sse_events(r):
            if event["type"] == "stdout":
                assert event["data"] == "hi\n", event
                return ms(start)
    raise AssertionError("no stdout")


def _plain(http: httpx.Client, sid: str) -> float:
    start = time.perf_counter()
    out = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo hi"}).json()
    assert out["stdout"] == "hi\n", out
    return ms(start)


def event_latency(http: httpx.Client, sid: str, runs: int) -> list[float]:
    """Lines a background process prints with its clock, decoded by the SDK's frame decoder as
    they arrive (the deadline is checked on every chunk, keepalives too: a stalled stream ends)."""
    command = "while true; do date +%s%N; sleep 0.02; done"
    pid = http.post(f"/v1/sandbox/{sid}/process/start", json={"command": command}).json()["pid"]
    latencies: list[float] = []
    deadline = time.monotonic() + FIGURE_DEADLINE_S
    try:
        with http.stream("GET", f"/v1/sandbox/{sid}/process/{pid}/events", headers=FRAMES) as r:
            decoder = FrameDecoder()
            for chunk in chunks(r, FIGURE_DEADLINE_S + STALL_S):
                arrived_ns = time.time_ns()
                for event in decoder.feed(chunk):
                    latencies += [(arrived_ns - int(line)) / 1e6 for line in event.data.split()]
                if len(latencies) > runs or time.monotonic() > deadline:
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
    deadline = time.monotonic() + FIGURE_DEADLINE_S
    params = {"path": "/tmp/wbench"}
    # a read timeout ends the figure when no event comes for a while (keepalives are 15 s apart)
    with http.stream("GET", f"/v1/sandbox/{sid}/filesystem/watch", params=params, timeout=5) as r:
        pid = http.post(f"/v1/sandbox/{sid}/process/start", json={"command": command}).json()["pid"]
        try:
            for event in sse_events(r, FIGURE_DEADLINE_S + STALL_S):
                arrived_ns = time.time_ns()
                name = str(event.get("path", "")).rsplit("/", 1)[-1]
                if event["type"] == "create" and name.isdigit():
                    latencies.append((arrived_ns - int(name)) / 1e6)
                if len(latencies) > runs or time.monotonic() > deadline:
                    break
        except (httpx.ReadTimeout, Stalled):
            pass
        finally:
            http.delete(f"/v1/sandbox/{sid}/process/{pid}")
    return latencies[1:]


def inside_throughput(http: httpx.Client, sid: str, size: int) -> float:
    """MB/s of the command writing to /dev/null inside the sandbox: the baseline."""
    start = time.perf_counter()
    body = {"command": f"yes | head -c {size} > /dev/null", "timeout": 600}
    out = http.post(f"/v1/sandbox/{sid}/process/execute", json=body).json()
    assert out["exit_code"] == 0, out
    return size / (time.perf_counter() - start) / 1e6


def stream_throughput(http: httpx.Client, sid: str, size: int) -> float:
    """MB/s of the command's output through ``execute/stream`` in the framed form, decoded to
    text events by the SDK's decoder (what iterating a stream costs; nothing kept)."""
    received = 0
    start = time.perf_counter()
    body = {"command": f"yes | head -c {size}", "timeout": 600}
    with http.stream(
        "POST", f"/v1/sandbox/{sid}/process/execute/stream", json=body, headers=FRAMES, timeout=STREAM_TIMEOUT
    ) as r:
        decoder = FrameDecoder()
        for chunk in chunks(r, STALL_S + size / MIN_RATE_BPS):
            for event in decoder.feed(chunk):
                if event.type == "stdout":
                    received += len(event.data)
    seconds = time.perf_counter() - start
    assert received == size, (received, size)
    return size / seconds / 1e6


def sdk_throughput(client: Client, sid: str, size: int) -> float:
    """MB/s of ``process.execute(on_stdout=...)``: the text to the callback, and the whole output
    kept for its result (``stdout``, one string of SIZE)."""
    received = 0

    def count(text: str) -> None:
        nonlocal received
        received += len(text)

    sandbox = client.sandboxes.get(sid)
    start = time.perf_counter()
    result = sandbox.process.execute(
        command=f"yes | head -c {size}", timeout=600, http_timeout=STALL_S, on_stdout=count
    )
    seconds = time.perf_counter() - start
    assert result.exit_code == 0 and received == size, (result.exit_code, received, size)
    return size / seconds / 1e6


def sse_throughput(http: httpx.Client, sid: str, size: int) -> float:
    """MB/s of the command's output through SSE, decoded (SSE + JSON) as its clients do."""
    received = 0
    start = time.perf_counter()
    body = {"command": f"yes | head -c {size}", "timeout": 600}
    with http.stream(
        "POST", f"/v1/sandbox/{sid}/process/execute/stream", json=body, timeout=STREAM_TIMEOUT
    ) as r:
        for event in sse_events(r, STALL_S + size / MIN_RATE_BPS):
            if event["type"] == "stdout":
                received += len(str(event["data"]))
    seconds = time.perf_counter() - start
    assert received == size, (received, size)
    return size / seconds / 1e6


def bounded(run: Callable[..., float], *args: Any) -> float:
    """A throughput run's MB/s, or 0 when it stalled (no byte for ``STALL_S``)."""
    try:
        return run(*args)
    except (httpx.TimeoutException, TimeoutError, Stalled):
        STALLS[run.__name__] += 1
        return 0.0


def in_thread(run: Callable[..., float], seconds: float, *args: Any) -> float:
    """``bounded(run)`` given ``seconds``: the SDK reads past keepalives, so a stalled stream
    would never time out; the thread is left behind (the server's stop ends its connection)."""
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(bounded(run, *args)), daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        STALLS[run.__name__] += 1
        return 0.0
    return result[0]


def default_runtimes() -> str:
    return "runc,runsc" if shutil.which("runsc") else "runc"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C (bench/report.py ends a late run so)


def measure(server: ServerProcess, runtime: str, runs: int, mib: int) -> list[str]:
    size = mib << 20
    with (
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=STREAM_TIMEOUT) as http,
        Client(api_key=server.api_key, base_url=server.base_url, timeout=STALL_S) as client,
    ):
        STALLS.clear()
        # an hour to live: the default 300 s ends a slow run (a loaded host) mid-stream
        sid = http.post("/v1/sandbox", json={"timeout": 3600}).json()["id"]
        try:
            framed, sse, plain = first_byte(http, sid, runs)
            try:
                latency = event_latency(http, sid, runs)
            except (httpx.TimeoutException, Stalled):
                latency, STALLS["event_latency"] = [], 1
            watched = watch_latency(http, sid, runs)
            inside = [bounded(inside_throughput, http, sid, size) for _ in range(3)]
            streamed = [bounded(stream_throughput, http, sid, size) for _ in range(3)]
            sdk_mbs = in_thread(sdk_throughput, STALL_S + size / MIN_RATE_BPS, client, sid, size)
            sse_mbs = bounded(sse_throughput, http, sid, min(size, SSE_MIB << 20))
        finally:
            http.delete(f"/v1/sandbox/{sid}/")
    inside_mbs, streamed_mbs = sorted(inside)[1], sorted(streamed)[1]  # medians of 3 (a stall: 0)
    stalled = ", ".join(f"{name} {count}" for name, count in sorted(STALLS.items()))
    return [
        row(f"[{runtime}] execute (echo hi), baseline", plain),
        row(f"[{runtime}] stream: first stdout byte", framed, plain),
        row(f"[{runtime}] stream (SSE): first stdout byte", sse, plain),
        row(f"[{runtime}] event latency (inside -> client)", latency),
        row(f"[{runtime}] watch latency (file created inside -> client)", watched),
        f"[{runtime}] throughput, {mib} MiB of `yes` (median of 3): streamed {streamed_mbs:.0f} MB/s, "
        f"to /dev/null inside {inside_mbs:.0f} MB/s ({ratio(streamed_mbs, inside_mbs)})",
        f"[{runtime}] throughput, {mib} MiB of `yes` through SDK execute(on_stdout), its result "
        f"holding all of it: {sdk_mbs:.0f} MB/s ({ratio(sdk_mbs, inside_mbs)})",
        f"[{runtime}] throughput, {min(mib, SSE_MIB)} MiB of `yes` through SSE (decoded: SSE + JSON): "
        f"{sse_mbs:.0f} MB/s ({ratio(sse_mbs, inside_mbs)})",
        *(
            [f"[{runtime}] stalled (no byte for {STALL_S:.0f} s; not in the figures): {stalled}"]
            if stalled
            else []
        ),
    ]


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "no baseline"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runtimes", default=default_runtimes())
    parser.add_argument("--mib", type=int, default=1024, help="streamed for the throughput figure")
    parser.add_argument(
        "--gvisor-mib", type=int, default=64, help="the same under runsc (its paced stream is far slower)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-", dir="/var/tmp"))
    load = os.getloadavg()
    lines = [
        f"# processes benchmark, {args.runs} runs per latency figure, default template; "
        f"load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    ]
    try:
        for runtime in args.runtimes.split(","):
            server = ServerProcess(data_dir=scratch / f"server-{runtime}", host="127.0.0.1", runtime=runtime)
            try:
                server.start()
                mib = args.gvisor_mib if runtime == "runsc" else args.mib
                lines += measure(server, runtime, args.runs, mib)
            finally:
                server.delete_everything()
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
