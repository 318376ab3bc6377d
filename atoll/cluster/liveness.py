"""The cluster's liveness job: every second, the process that leads it (``AdvisoryLeader``)
marks nodes silent for ``down_after_s`` down and their sandboxes ``failed`` with the reason,
then gives back the placed room of sandboxes that ended (``Placer.release_ended``).
Each process of the cluster runs this loop; only the leader does the work, and when the leader
dies another process takes the lock within one tick."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from atoll._tasks import cancel_and_wait
from atoll.cluster.leader import AdvisoryLeader
from atoll.cluster.placement import Placer
from atoll.cluster.registry import DownedNode, NodeRegistry

log = logging.getLogger("atoll.cluster")
TICK_S = 1.0


class LivenessMonitor:
    def __init__(
        self,
        registry: NodeRegistry,
        leader: AdvisoryLeader,
        *,
        down_after_s: float,
        on_failed: Callable[[str], None] | None = None,  # told each sandbox id it failed
        placer: Placer | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.registry = registry
        self.leader = leader
        self.down_after_s = down_after_s
        self.on_failed = on_failed
        self.placer = placer
        self.tick_s = tick_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="cluster liveness")

    async def check_once(self) -> list[DownedNode]:
        if not await self.leader.try_lead():
            return []
        downed = await self.registry.mark_silent_down(self.down_after_s)
        for node in downed:
            log.warning("%s: %d sandboxes failed", node.reason, len(node.failed_sandboxes))
            if self.on_failed is not None:
                for sandbox_id in node.failed_sandboxes:
                    self.on_failed(sandbox_id)
        if self.placer is not None:
            await self.placer.release_ended()
        return downed

    async def _run_forever(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("cluster liveness check failed")
            await asyncio.sleep(self.tick_s)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self.leader.release()
