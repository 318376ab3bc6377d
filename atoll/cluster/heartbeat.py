"""A node's side of membership: register at start-up, then heartbeat every interval with a
fresh report (capacity used, templates cached, warm pools, health). A heartbeat that fails
(database unreachable) is retried on the next tick; the node keeps running its sandboxes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from atoll._tasks import cancel_and_wait
from atoll.cluster.registry import NodeRegistry, NodeReport

log = logging.getLogger("atoll.cluster")
Reporter = Callable[[], Awaitable[NodeReport]]


class Heartbeat:
    def __init__(
        self,
        registry: NodeRegistry,
        node_id: str,
        *,
        role: str,
        hostname: str,
        address: str,
        report: Reporter,
        interval_s: float,
    ) -> None:
        self.registry = registry
        self.node_id = node_id
        self.role = role
        self.hostname = hostname
        self.address = address
        self.report = report
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        await self.registry.register(
            self.node_id, role=self.role, hostname=self.hostname, address=self.address,
            report=await self.report(),
        )  # fmt: skip

    async def start(self) -> None:
        await self.register()
        self._task = asyncio.create_task(self._beat_forever(), name=f"heartbeat {self.node_id}")

    async def beat(self) -> None:
        """One heartbeat now (also between the ticks: what the host caches changed)."""
        if not await self.registry.heartbeat(self.node_id, await self.report()):
            await self.register()  # its row was removed: the node is still here

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat of node %s failed", self.node_id)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
