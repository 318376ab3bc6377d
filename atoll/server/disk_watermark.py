"""The disk watermark: growth stopped at its source before the data filesystem fills.

Every ``INTERVAL_S`` the server surveys the data filesystem and every sandbox disk on it
(``atoll.runtime.disk_space.survey``: one ``stat`` and one ``statvfs`` per disk). While free
space, net of what disks have pending in page caches, stays above twice the reserve nothing
happens. Below that, the heaviest disk (the most blocks its image costs the host) is clamped
(``disk_space.clamp``): its own writes fail with ENOSPC in its own disk and it keeps running;
nobody else notices. Should free space still fall to the reserve itself (several writers at
once, or one writing into blocks it ``fallocate``d beforehand), every disk still growing is
clamped too: the reserve is the server's and the filesystem must never fill, since a full one
turns into I/O errors in every sandbox and a read-only remount for all. Once free space is back
above three times the reserve (deletes, or a stopped writer's disk removed), every clamp is
lifted. Admission (``atoll.server.disk_budget``) refuses new disks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from atoll.runtime import disk_space
from atoll.runtime.disk_space import HostSpace
from atoll.server.disk_budget import MIB, DiskBudget, watermark_bytes

log = logging.getLogger("atoll.disk")

INTERVAL_S = 0.25  # a writer at ~400 MB/s gets ~100 MB past the watermark before its clamp
# a full survey at least this often even with room to spare: it lifts clamps left in disks that
# were not mounted when room came back (a stopped sandbox started again, a server restarted)
FULL_SURVEY_S = 10.0


@dataclass(frozen=True)
class Plan:
    clamp: tuple[Path, ...] = ()
    unclamp: tuple[Path, ...] = ()
    reasons: dict[Path, str] = field(default_factory=dict)


def plan(space: HostSpace, previous_cost: dict[Path, int], reserve_bytes: int) -> Plan:
    """What to clamp and unclamp now (pure: the arithmetic of the module docstring).
    ``previous_cost``: each disk's ``cost_bytes`` at the last survey (who is growing)."""
    free = space.effective_free_bytes
    if free > 3 * reserve_bytes:
        return Plan(unclamp=tuple(d.sandbox_dir for d in space.disks if d.clamped))
    if free >= watermark_bytes(reserve_bytes):
        return Plan()
    free_mib = free // MIB
    mounted = [d for d in space.disks if d.used_bytes > 0]
    if not mounted:
        return Plan()
    heaviest = max(mounted, key=lambda d: d.cost_bytes)
    chosen: dict[Path, str] = {}
    if not heaviest.clamped:
        chosen[heaviest.sandbox_dir] = (
            f"the heaviest disk ({heaviest.cost_bytes // MIB} MiB), "
            f"with {free_mib} MiB free on the data filesystem"
        )
    if free < reserve_bytes:
        for d in mounted:
            grew = d.cost_bytes > previous_cost.get(d.sandbox_dir, d.cost_bytes)
            if grew and not d.clamped and d.sandbox_dir not in chosen:
                chosen[d.sandbox_dir] = f"growing with {free_mib} MiB free, inside the server's reserve"
    return Plan(clamp=tuple(chosen), reasons=chosen)


class DiskWatermark:
    def __init__(self, budget: DiskBudget) -> None:
        self.budget = budget
        self._previous_cost: dict[Path, int] = {}
        self.clamped: dict[str, str] = {}  # sandbox id -> why (for logs and the health report)
        # what page caches could hold unwritten at most: with more free than this past the
        # watermarks, no disk needs a look (a survey of 500 disks takes ~14 ms)
        self._memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self._surveyed_at = -FULL_SURVEY_S

    async def run_forever(self, interval_s: float = INTERVAL_S) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("disk watermark check failed")
            await asyncio.sleep(interval_s)

    def tick(self) -> Plan:
        host = os.statvfs(self.budget.data_dir)
        roomy = host.f_bavail * host.f_frsize > 3 * self.budget.reserve_bytes + self._memory_bytes
        now = time.monotonic()
        if roomy and not self.clamped and now - self._surveyed_at < FULL_SURVEY_S:
            self._previous_cost = {}
            return Plan()
        self._surveyed_at = now
        space = disk_space.survey(self.budget.data_dir, self.budget.disk_parents)
        decided = plan(space, self._previous_cost, self.budget.reserve_bytes)
        clamped_now: dict[str, str] = {}
        for sandbox_dir in decided.clamp:
            try:
                held = disk_space.clamp(sandbox_dir)
            except OSError as exc:  # deleted or stopped meanwhile
                log.warning("could not clamp the disk of %s: %s", sandbox_dir.name, exc)
                continue
            clamped_now[sandbox_dir.name] = reason = decided.reasons[sandbox_dir]
            log.warning(
                "disk of %s clamped (its writes now fail with ENOSPC; %d MiB held): %s",
                sandbox_dir.name,
                held // MIB,
                reason,
            )
        for sandbox_dir in decided.unclamp:
            if disk_space.unclamp(sandbox_dir):
                log.warning("disk of %s unclamped: the data filesystem has room again", sandbox_dir.name)
        self._previous_cost = {d.sandbox_dir: d.cost_bytes for d in space.disks}
        # mounted disks still clamped (some by an earlier server), and those clamped just now
        for d in space.disks:
            if d.clamped and d.sandbox_dir not in decided.unclamp:
                clamped_now.setdefault(
                    d.sandbox_dir.name, self.clamped.get(d.sandbox_dir.name, "clamped before")
                )
        self.clamped = clamped_now
        return decided
