"""A pool of ready network namespaces, so that creating a sandbox does not wait for netlink.

Slots are handed out by index; a released slot's netns is torn down before its index is reused.
Refill runs in the background, one slot at a time, and never holds up an acquire: when the pool
is empty, ``acquire`` builds a slot itself.

With ``ranges`` (user namespaces on), each slot also claims a range of host ids and its netns is
made inside a user namespace mapping it (``atoll.runtime.userns_slot``); the claim is released
once the slot is torn down."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from atoll._exceptions import HostCapacityExhausted
from atoll._tasks import cancel_and_wait
from atoll.network import netns
from atoll.network.addressing import AddressPlan, Slot
from atoll.runtime import userns_slot
from atoll.runtime.userns import Ranges, RangesExhausted
from atoll.runtime.userns_net import HOLDING_SUFFIX

log = logging.getLogger("atoll.network")


class NetworkPool:
    def __init__(self, plan: AddressPlan, *, target_size: int, ranges: Ranges | None = None) -> None:
        self.plan = plan
        self.target_size = target_size
        self.ranges = ranges
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
            elif name.startswith(self.plan.netns_prefix) and name.endswith(HOLDING_SUFFIX):
                netns.remove_named(name)  # a checkpoint's, cut short by a crash (userns_net.park)
                removed.append(name)
        for name in netns.existing_ifnames():
            index = self.plan.index_of_ifname(name)
            if index is not None and index not in keep:
                stale.add(index)
        # a slot's user namespace files outlive its netns when a server dies between the two
        for name in userns_slot.existing_names():
            index = self.plan.index_of_netns(name)
            if index is not None and index not in keep:
                stale.add(index)
        for index in sorted(stale):
            if 1 <= index <= self.plan.capacity:
                slot = self.plan.slot(index)
                self._remove(slot)
                removed.append(slot.netns_name)
        if self.ranges is not None:  # claims of slots gone while the server was down
            self.ranges.sweep(_slot_alive)
        return removed

    def _create(self, slot: Slot) -> None:
        """Blocking: the slot's netns (and user namespace, claiming a range for it)."""
        if self.ranges is None:
            netns.create(slot)
            return
        try:
            id_range = self.ranges.claim(slot.netns_name, _slot_alive)
        except RangesExhausted:
            raise HostCapacityExhausted(
                "every user-namespace id range is in use; raise --userns-ranges"
            ) from None
        try:
            netns.create(slot, id_range)
        except BaseException:
            self.ranges.release(slot.netns_name)
            raise

    def _remove(self, slot: Slot) -> None:
        netns.remove(slot)
        if self.ranges is not None:
            self.ranges.release(slot.netns_name)

    def _next_index(self) -> int:
        for index in range(1, self.plan.capacity + 1):
            if index not in self._taken:
                self._taken.add(index)
                return index
        raise HostCapacityExhausted("no free sandbox network address; widen the sandbox subnet")

    async def acquire(self) -> Slot:
        """A ready slot, or one made now. Taking a ready one does not wake the refill: the boot
        that takes it calls ``refill`` when done, so it never shares the CPU with making the next
        slot (with user namespaces that is a process and ~8 ms of CPU, 5-10% of a cold create)."""
        if self._ready:
            return self._ready.popleft()
        self._wake.set()  # none ready: the refill catches up behind this one
        slot = self.plan.slot(self._next_index())
        await self._make(slot)
        return slot

    async def _make(self, slot: Slot) -> None:
        """Make the slot (its index taken), or give the index back if that fails. A thread
        cannot be stopped: when the caller is cancelled (a create given up, the pool closing)
        the slot the thread goes on to make is put with the ready ones, where the next create
        or ``close`` finds it, instead of being left on the host with nobody knowing of it."""
        making = asyncio.ensure_future(asyncio.to_thread(self._create, slot))
        try:
            await asyncio.shield(making)
        except asyncio.CancelledError:
            try:
                await making
            except Exception:
                self._taken.discard(slot.index)
            else:
                self._ready.append(slot)
            raise
        except BaseException:
            self._taken.discard(slot.index)
            raise

    def refill(self) -> None:
        """Make ready slots again, up to the pool's size (after a boot that took one)."""
        self._wake.set()

    def adopt(self, index: int) -> Slot:
        self._taken.add(index)
        return self.plan.slot(index)

    async def release(self, slot: Slot) -> None:
        try:
            await asyncio.to_thread(self._remove, slot)
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
                except HostCapacityExhausted:
                    break
                slot = self.plan.slot(index)
                try:
                    await self._make(slot)
                except Exception:
                    log.exception("could not prepare network slot %d", index)
                    await asyncio.sleep(1)
                    break
                self._ready.append(slot)

    async def close(self) -> None:
        await cancel_and_wait(self._refiller)
        while self._ready:
            await self.release(self._ready.popleft())


def _slot_alive(owner: str, netns_name: str) -> bool:
    """A range claim's slot still exists (whichever server on the host made it)."""
    return userns_slot.exists(netns_name)
