"""Admission against the data filesystem: sandbox disks are over-committed, within a bound.

A sandbox disk is a sparse image (``atoll.runtime.disk``): an idle one costs a few MiB whatever
its size, so the sizes are over-committed, like memory. What the filesystem *can back* is what
sandbox disks use now plus what is free, less the reserve kept for the server (its database,
snapshots, checkpoints, logs). The sizes of all disks (running, paused, stopped, pooled, and
those being made) may add up to ``disk_overcommit_ratio`` times that. And nothing new starts
while free space (net of data still in page caches, ``HostSpace.effective_free_bytes``) is
within one reserve of the reserve itself: there the watermark (``atoll.server.disk_watermark``)
is already clamping writers. Either refusal is a 503 with ``Retry-After`` naming the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from atoll._exceptions import CapacityError
from atoll.runtime.disk_space import HostSpace, survey

MIB = 1024 * 1024
RETRY_AFTER_S = 30


def watermark_bytes(reserve_bytes: int) -> int:
    """Below this much effective free space the watermark clamps, and admission refuses."""
    return 2 * reserve_bytes


def backable_bytes(space: HostSpace, reserve_bytes: int) -> int:
    """What sandbox disks could use at most: what they use now plus what is free, less the reserve."""
    return max(0, space.disks_cost_bytes + space.effective_free_bytes - reserve_bytes)


def refusal(
    space: HostSpace, *, new_bytes: int, pending_new_bytes: int, ratio: float, reserve_bytes: int
) -> str | None:
    """Why a new claim of ``new_bytes`` (0: a start of a disk that exists) cannot be backed, or
    None. ``pending_new_bytes``: disks admitted whose images are not made yet."""
    free_mib = space.effective_free_bytes // MIB
    if space.effective_free_bytes < watermark_bytes(reserve_bytes):
        return (
            f"the data filesystem is nearly full: {free_mib} MiB free, of which "
            f"{reserve_bytes // MIB} MiB are kept in reserve (disk_reserve_mib); retry later"
        )
    if new_bytes <= 0:
        return None
    backable = backable_bytes(space, reserve_bytes)
    limit = int(ratio * backable)
    committed = space.committed_bytes + pending_new_bytes
    if committed + new_bytes > limit:
        return (
            f"sandbox disks would be over-committed: {committed // MIB} MiB committed plus "
            f"{new_bytes // MIB} MiB is past {ratio:g} (disk_overcommit_ratio) times the "
            f"{backable // MIB} MiB the data filesystem can back; retry later"
        )
    return None


class DiskBudget:
    def __init__(
        self, data_dir: Path, disk_parents: tuple[Path, ...], *, ratio: float, reserve_mib: int
    ) -> None:
        self.data_dir = data_dir
        self.disk_parents = disk_parents
        self.ratio = ratio
        self.reserve_bytes = reserve_mib * MIB
        # check-then-claim: two creates must not both see the same room
        self._admission = asyncio.Lock()
        self._pending_bytes = 0  # admitted disks whose images are not there yet

    async def survey(self) -> HostSpace:
        return await asyncio.to_thread(survey, self.data_dir, self.disk_parents)

    async def _check(self, new_bytes: int) -> None:
        space = await self.survey()
        reason = refusal(
            space,
            new_bytes=new_bytes,
            pending_new_bytes=self._pending_bytes,
            ratio=self.ratio,
            reserve_bytes=self.reserve_bytes,
        )
        if reason is not None:
            raise CapacityError(reason, retry_after=RETRY_AFTER_S)

    async def check_start(self) -> None:
        """A sandbox whose disk exists (a start, a resume from a checkpoint) may run again."""
        await self._check(0)

    def reserve(self, disk_mib: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Room for a new disk of ``disk_mib``, held until the block ends (its image exists by
        then, or it failed and is gone)."""
        return self.reserve_room(disk_mib * MIB)

    @contextlib.asynccontextmanager
    async def reserve_room(self, new_bytes: int) -> AsyncIterator[None]:
        """Room for ``new_bytes`` more on the data disk (a new sandbox disk, a template copied
        from another node), held until the block ends."""
        async with self._admission:
            await self._check(new_bytes)
            self._pending_bytes += new_bytes
        try:
            yield
        finally:
            self._pending_bytes -= new_bytes
