"""The network pool's refill waits for the boot that took a ready slot: a create never shares the
CPU with making the next slot (``NetworkPool.acquire``), and the pool still fills up again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from atoll.network.addressing import AddressPlan, Slot
from atoll.network.pool import NetworkPool


class RecordingPool(NetworkPool):
    """The real pool, with slot making recorded instead of done (no namespaces, no root)."""

    def __init__(self, size: int) -> None:
        plan = AddressPlan("10.250.0.0/24", instance="unitpool", iface_prefix="up")
        super().__init__(plan, target_size=size)
        self.made: list[int] = []
        self.removed: list[int] = []
        self.slow_create: threading.Event | None = None
        self._lock = threading.Lock()

    def _sweep(self, keep: set[int]) -> list[str]:
        return []

    def _create(self, slot: Slot) -> None:
        if self.slow_create is not None:  # a slot still being made when its caller gives up
            self.slow_create.wait(5)
        with self._lock:
            self.made.append(slot.index)

    def _remove(self, slot: Slot) -> None:
        with self._lock:
            self.removed.append(slot.index)


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):  # polls what the pool's own tasks change
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def pool() -> AsyncIterator[RecordingPool]:
    pool = RecordingPool(size=2)
    await pool.start(set())
    await until(lambda: pool.ready_count == 2)
    yield pool
    await pool.close()


async def test_taking_a_ready_slot_leaves_the_refill_to_the_end_of_the_boot(pool: RecordingPool) -> None:
    taken = await pool.acquire()
    await asyncio.sleep(0.2)  # the boot: the refill has had every chance to run
    assert pool.made == [1, 2] and pool.ready_count == 1 and taken.index == 1
    pool.refill()  # the boot is done
    await until(lambda: pool.ready_count == 2)
    assert pool.made == [1, 2, 3]


async def test_an_empty_pool_makes_the_slot_at_once_and_refills_behind_it(pool: RecordingPool) -> None:
    first, second = await pool.acquire(), await pool.acquire()
    third = await pool.acquire()  # none ready: made now, and the refill woken
    assert [first.index, second.index, third.index] == [1, 2, 3]
    await until(lambda: pool.ready_count == 2)
    assert pool.made == [1, 2, 3, 4, 5]


async def test_a_released_slot_wakes_the_refill(pool: RecordingPool) -> None:
    taken = await pool.acquire()
    await pool.release(taken)  # a boot that failed gives its slot back
    await until(lambda: pool.ready_count == 2)
    assert pool.made[:2] == [1, 2] and len(pool.made) == 3


async def test_a_slot_made_while_the_pool_closes_is_removed_with_the_others() -> None:
    """Closing cancels the refill while a thread makes a slot: the thread goes on, and the slot it
    makes must not stay on the host unknown (a start-up failing late left one behind)."""
    pool = RecordingPool(size=2)
    pool.slow_create = threading.Event()
    await pool.start(set())
    await asyncio.sleep(0.05)  # the refill is making slot 1, held in its thread
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0.05)
    pool.slow_create.set()  # the thread finishes after the refill was cancelled
    await closing
    assert pool.made == [1] and pool.removed == [1] and pool.ready_count == 0


async def test_a_create_given_up_while_its_slot_is_made_leaves_the_slot_ready(pool: RecordingPool) -> None:
    await pool.acquire(), await pool.acquire()  # none ready: the next is made for the caller
    pool.slow_create = threading.Event()
    given_up = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    given_up.cancel()
    pool.slow_create.set()
    with pytest.raises(asyncio.CancelledError):
        await given_up
    assert 3 in pool.made and pool.ready_count >= 1  # made after all: ready for the next create
