"""A pool of ready network namespaces, so that creating a sandbox does not wait for netlink.

Slots are handed out by index; a released slot's netns is torn down before its index is reused.
Refill runs in the background, one slot at a time, and never holds up an acquire: when the pool
is empty, ``acquire`` builds a slot itself."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from atoll._exceptions import CapacityError
from atoll._tasks import cancel_and_wait
from atoll.network import netns
from atoll.network.addressing import AddressPlan, Slot

log = logging.getLogger("atoll.network")


class NetworkPool:
    def __init__(self, plan: AddressPlan, *, target_size: int) -> None:
        self.plan = plan
        self.target_size = target_size
        self._ready: deque[Slot] = deque()
        self._taken: set[int] = set()  # indices held by sandboxes, the pool, or in teardown
        self._wake = asyncio.Event()
        self._refiller: asyncio.Task[None] | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    async def start(self, held_by_sandboxes: set[int]) -> list[str]:
        """Adopt the slots live sandboxes hold, remove every other netns/veth of this instance
        (crash leftovers), and start filling. Returns what was removed."""
        self._taken = set(held_by_sandboxes)
        removed = await asyncio.to_thread(self._sweep, set(held_by_sandboxes))
        self._refiller = asyncio.create_task(self._refill_forever())
        self._wake.set()
        return removed

    def _sweep(self, keep: set[int]) -> list[str]:
        removed = []
        stale: set[int] = set()
        for name in netns.existing_netns():
            index = self.plan.index_of_netns(name)
            if index is not None and index not in keep:
                stale.add(index)
        for name in netns.existing_ifnames():
            index = self.plan.index_of_ifname(name)
            if index is not None and index not in keep:
                stale.add(index)
        for index in sorted(stale):
            if 1 <= index <= self.plan.capacity:
                slot = self.plan.slot(index)
                netns.remove(slot)
                removed.append(slot.netns_name)
        return removed

    def _next_index(self) -> int:
        for index in range(1, self.plan.capacity + 1):
            if index not in self._taken:
                self._taken.add(index)
                return index
        raise CapacityError("no free sandbox network address; widen the sandbox subnet")

    async def acquire(self) -> Slot:
        self._wake.set()
        if self._ready:
            return self._ready.popleft()
        index = self._next_index()
        slot = self.plan.slot(index)
        try:
            await asyncio.to_thread(netns.create, slot)
        except BaseException:
            self._taken.discard(index)
            raise
        return slot

    def adopt(self, index: int) -> Slot:
        self._taken.add(index)
        return self.plan.slot(index)

    async def release(self, slot: Slot) -> None:
        try:
            await asyncio.to_thread(netns.remove, slot)
        finally:
            self._taken.discard(slot.index)
            self._wake.set()

    async def _refill_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while len(self._ready) < self.target_size:
                try:
                    index = self._next_index()
                except CapacityError:
                    break
                slot = self.plan.slot(index)
                try:
                    await asyncio.to_thread(netns.create, slot)
                except Exception:
                    log.exception("could not prepare network slot %d", index)
                    self._taken.discard(index)
                    await asyncio.sleep(1)
                    break
                self._ready.append(slot)

    async def close(self) -> None:
        await cancel_and_wait(self._refiller)
        while self._ready:
            await self.release(self._ready.popleft())
