"""Sandbox metrics (``spec/processes.md``: ``GET /v1/sandbox/{id}/metrics``) and the server's
Prometheus families.

The server samples every running sandbox every ``Settings.metrics_interval_s`` from the host:
CPU time, memory and pids from the sandbox's cgroup (v1 or v2), disk from its disk image's
filesystem (``statvfs`` of the mounted image; without a disk quota, the bytes of its upper layer),
network from the host end of its veth (the host's receive is the sandbox's transmit). Reading a
few small files costs far less than anything inside the sandbox would, works the same for both
backends (a gVisor sandbox's cgroup holds its sentry, gofer and their threads, so its memory and
pids include gVisor's own), and leaves a paused sandbox untouched. History is kept in memory per
sandbox (``MAX_SAMPLES``, oldest dropped) until the sandbox is deleted; a server restart starts
afresh.

``cpu_used_pct`` is of all the sandbox's vCPUs together (0-100, as E2B reports it): a busy loop
on one of two vCPUs is 50. Prometheus families (``collect``) carry the latest sample per sandbox,
the sandbox state changes the server saw, and API request latencies (``LatencyMiddleware``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atoll._states import State
from atoll.runtime import cgroups
from atoll.server.manager import SandboxManager
from atoll.store.models import SandboxRow

log = logging.getLogger("atoll.metrics")
MAX_SAMPLES = 4320  # per sandbox: 6 hours at the default 5 s
MIB = 1024 * 1024
_WALK_LIMIT = 200_000  # entries of an upper layer summed per sample (no quota: no image to ask)


@dataclass(frozen=True, kw_only=True)
class Sample:
    timestamp: str
    cpu_count: int
    cpu_used_pct: float
    mem_used_mib: float
    mem_total_mib: float
    disk_used_mib: float
    disk_total_mib: float
    net_rx_bytes: int
    net_tx_bytes: int
    pids: int

    def wire(self) -> dict[str, Any]:
        return asdict(self)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if not text or text[0] == "max":
        return None
    try:
        return int(text[0])
    except ValueError:
        return None


def _stat_file(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                found[key] = int(value)
    return found


@dataclass(frozen=True)
class CgroupReading:
    cpu_ns: int
    memory_bytes: int
    memory_limit_bytes: int | None
    pids: int


def read_cgroup(parent: str, name: str) -> CgroupReading | None:
    """CPU time, memory in use (less the reclaimable file cache) and pids of one sandbox."""
    root = cgroups.CGROUP_ROOT
    group = f"{parent.strip('/')}/{name}"
    if cgroups.is_v2():
        base = root / group
        cpu_us = _stat_file(base / "cpu.stat").get("usage_usec")
        memory = _read_int(base / "memory.current")
        if cpu_us is None or memory is None:
            return None
        inactive = _stat_file(base / "memory.stat").get("inactive_file", 0)
        return CgroupReading(
            cpu_ns=cpu_us * 1000,
            memory_bytes=max(0, memory - inactive),
            memory_limit_bytes=_read_int(base / "memory.max"),
            pids=_read_int(base / "pids.current") or 0,
        )
    cpu_ns = _read_int(root / "cpuacct" / group / "cpuacct.usage")
    memory = _read_int(root / "memory" / group / "memory.usage_in_bytes")
    if cpu_ns is None or memory is None:
        return None
    inactive = _stat_file(root / "memory" / group / "memory.stat").get("total_inactive_file", 0)
    limit = _read_int(root / "memory" / group / "memory.limit_in_bytes")
    return CgroupReading(
        cpu_ns=cpu_ns,
        memory_bytes=max(0, memory - inactive),
        memory_limit_bytes=limit if limit is not None and limit < 1 << 60 else None,
        pids=_read_int(root / "pids" / group / "pids.current") or 0,
    )


def _tree_bytes(path: Path) -> int:
    """Bytes allocated below ``path``, at most ``_WALK_LIMIT`` entries of it."""
    total, seen, todo = 0, 0, [str(path)]
    while todo and seen < _WALK_LIMIT:
        with contextlib.suppress(OSError), os.scandir(todo.pop()) as entries:
            for entry in entries:
                seen += 1
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
    return total


def read_disk(sandbox_dir: Path, disk_mib: int) -> tuple[float, float]:
    """(used, total) MiB of the sandbox's own filesystem."""
    image = sandbox_dir / "disk"
    with contextlib.suppress(OSError):
        if os.stat(image).st_dev != os.stat(sandbox_dir).st_dev:  # the mounted disk image
            vfs = os.statvfs(image)
            total = vfs.f_blocks * vfs.f_frsize
            return (total - vfs.f_bfree * vfs.f_frsize) / MIB, total / MIB
    return _tree_bytes(sandbox_dir / "upper") / MIB, float(disk_mib)


def read_net(host_ifname: str | None) -> tuple[int, int]:
    """(received, transmitted) bytes of the sandbox: the host end's counters, swapped."""
    if not host_ifname:
        return 0, 0
    stats = Path("/sys/class/net") / host_ifname / "statistics"
    return _read_int(stats / "tx_bytes") or 0, _read_int(stats / "rx_bytes") or 0


# sample field -> (Prometheus name after atoll_sandbox_, help)
_GAUGES = {
    "cpu_used_pct": ("cpu_used_percent", "CPU used, % of all its vCPUs"),
    "mem_used_mib": ("memory_used_mib", "Memory in use, less reclaimable file cache"),
    "mem_total_mib": ("memory_limit_mib", "Memory limit"),
    "disk_used_mib": ("disk_used_mib", "Disk in use"),
    "disk_total_mib": ("disk_size_mib", "Disk size"),
    "net_rx_bytes": ("network_receive_bytes", "Bytes received (this boot)"),
    "net_tx_bytes": ("network_transmit_bytes", "Bytes sent (this boot)"),
    "pids": ("pids", "Tasks in its cgroup (under gVisor: gVisor's own threads too)"),
}


@dataclass
class _History:
    samples: deque[Sample]
    last_cpu: tuple[float, int] | None = None  # (monotonic s, cgroup CPU ns) of the last sample


class MetricsService:
    def __init__(self, manager: SandboxManager, *, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._histories: dict[str, _History] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def samples(self, sandbox_id: str, since: dt.datetime | None = None) -> list[dict[str, Any]]:
        history = self._histories.get(sandbox_id)
        if history is None:
            return []
        found = list(history.samples)
        if since is not None:
            cutoff = since.isoformat()  # one format and zone (UTC) on both sides: compared as text
            found = [s for s in found if s.timestamp > cutoff]
        return [s.wire() for s in found]

    def latest(self) -> dict[str, Sample]:
        return {sid: h.samples[-1] for sid, h in self._histories.items() if h.samples}

    async def _sample_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sample_once()
            except Exception:
                log.exception("sampling sandbox metrics failed")
            await asyncio.sleep(max(0.1, self.interval_s - (time.monotonic() - started)))

    async def sample_once(self) -> None:
        rows = await self.manager.repo.not_deleted()
        known = {row.id for row in rows}
        for gone in set(self._histories) - known:  # deleted: its history goes with it
            del self._histories[gone]
        running = [row for row in rows if row.state == State.RUNNING]
        if running:
            await asyncio.to_thread(self._sample_rows, running)

    def _sample_rows(self, rows: list[SandboxRow]) -> None:
        for row in rows:
            try:
                self._sample(row)
            except Exception:
                log.exception("sampling sandbox %s failed", row.id)

    def _sample(self, row: SandboxRow) -> None:
        reading = read_cgroup(self.manager.settings.cgroup_parent, row.id)
        if reading is None:  # not (or no longer) running
            return
        now = time.monotonic()
        history = self._histories.setdefault(row.id, _History(deque(maxlen=MAX_SAMPLES)))
        cpu_pct = 0.0
        if history.last_cpu is not None and now > history.last_cpu[0]:
            used_s = max(0, reading.cpu_ns - history.last_cpu[1]) / 1e9
            cpu_pct = min(100.0, 100.0 * used_s / ((now - history.last_cpu[0]) * max(1, row.vcpu)))
        history.last_cpu = (now, reading.cpu_ns)
        disk_used, disk_total = read_disk(self.manager.host.sandbox_dir(row.id), row.disk)
        slot = self.manager.slot_of(row)
        rx, tx = read_net(slot.host_ifname if slot else None)
        limit = reading.memory_limit_bytes
        history.samples.append(
            Sample(
                timestamp=dt.datetime.now(dt.UTC).isoformat(),
                cpu_count=row.vcpu,
                cpu_used_pct=round(cpu_pct, 2),
                mem_used_mib=round(reading.memory_bytes / MIB, 2),
                mem_total_mib=round(limit / MIB, 2) if limit else float(row.memory),
                disk_used_mib=round(disk_used, 2),
                disk_total_mib=round(disk_total, 2),
                net_rx_bytes=rx,
                net_tx_bytes=tx,
                pids=reading.pids,
            )
        )

    def collect(self, sandbox_ids: set[str] | None = None) -> Iterator[Metric]:
        """Gauges of the latest sample per sandbox (``sandbox_ids``: only those)."""
        families = {
            key: GaugeMetricFamily(f"atoll_sandbox_{name}", text, labels=["sandbox"])
            for key, (name, text) in _GAUGES.items()
        }
        for sid, sample in self.latest().items():
            if sandbox_ids is not None and sid not in sandbox_ids:
                continue
            values = sample.wire()
            for key, family in families.items():
                family.add_metric([sid], float(values[key]))
        yield from families.values()


# Process-wide families (the server is one process; prometheus_client's default registry is not
# used, so tests that build several apps in one process do not collide on registration).
STATE_CHANGES = Counter(
    "atoll_sandbox_state_changes", "Sandbox states entered, as the server saw them", ["state"], registry=None
)
API_LATENCY = Histogram(
    "atoll_api_request_duration_seconds",
    "API request latency until the response started (streams: until their first byte)",
    ["method", "route", "status"],
    registry=None,
)


class StateCounter:
    """Counts the states sandboxes enter: subscribed to the repository's change notices."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._states: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, sandbox_id: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a change made outside the server's loop (none today): not counted
            return
        task = loop.create_task(self._look(sandbox_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _look(self, sandbox_id: str) -> None:
        row = await self.manager.repo.get_sandbox(sandbox_id)
        state = row.state if row is not None else State.DELETED
        if self._states.get(sandbox_id) != state:
            STATE_CHANGES.labels(state=str(state)).inc()
        if state == State.DELETED:
            self._states.pop(sandbox_id, None)
        else:
            self._states[sandbox_id] = str(state)


class LatencyMiddleware:
    """Times each API request (by its route's template, not its path: bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        async def timed_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                API_LATENCY.labels(
                    method=scope["method"], route=template, status=str(message["status"])
                ).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)


class _Families(Collector):
    def __init__(self, service: MetricsService, sandbox_ids: set[str]) -> None:
        self.service = service
        self.sandbox_ids = sandbox_ids

    def collect(self) -> Iterator[Metric]:
        yield from self.service.collect(self.sandbox_ids)
        yield from STATE_CHANGES.collect()
        yield from API_LATENCY.collect()


async def collector_for(service: MetricsService, org: str) -> Collector:
    """What ``GET /v1/metrics`` adds for ``org``: its sandboxes' gauges, and the server-wide
    state-change counters and API latencies (counts and timings only: no other org's names)."""
    rows = await service.manager.repo.not_deleted()
    return _Families(service, {row.id for row in rows if row.org_id == org})
