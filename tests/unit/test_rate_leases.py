"""The lease arithmetic of the cluster's rate limit (``atoll.server.rate_leases``), with a fake
clock and an in-memory ledger that grants as the real one's upsert does (``lease_size``; the
real statement is checked against it on PostgreSQL in tests/cluster/test_rate_limit.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from atoll.cluster.rate_ledger import MAX_LEASE, Grant, lease_size
from atoll.server.rate_leases import SharedRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLedger:
    """One window per key, reset when ended, granting ``lease_size`` under one lock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.windows: dict[str, list[float]] = {}  # key hash -> [window end, granted]
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail: Exception | None = None
        self.hang = False

    async def lease(self, key_hash: str, *, limit: int, window_s: float) -> Grant:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a round trip: other requests run meanwhile
            if self.hang:
                await asyncio.sleep(3600)
            if self.fail is not None:
                raise self.fail
            now = self.clock()
            window = self.windows.get(key_hash)
            if window is None or window[0] <= now:
                window = self.windows[key_hash] = [now + window_s, 0]
            lease = lease_size(limit, int(window[1]))
            window[1] += lease
            return Grant(lease=lease, granted=int(window[1]), seconds_left=window[0] - now)
        finally:
            self.in_flight -= 1

    async def sweep(self) -> int:
        return 0


def _limiters(
    count: int, *, limit: int, window: float = 60.0
) -> tuple[Clock, FakeLedger, list[SharedRateLimiter]]:
    clock = Clock()
    ledger = FakeLedger(clock)
    return (
        clock,
        ledger,
        [SharedRateLimiter(ledger, limit=limit, window=window, clock=clock) for _ in range(count)],
    )


def test_lease_size_never_passes_what_is_left() -> None:
    for limit in (1, 2, 3, 7, 30, 79, 1000, 5000):
        granted, leases = 0, []
        while (lease := lease_size(limit, granted)) > 0:
            assert lease <= MAX_LEASE and lease <= limit - granted
            assert lease >= 1 and lease <= max(1, (limit - granted) // 4)
            granted += lease
            leases.append(lease)
        assert granted == limit, (limit, leases)  # the whole window is handed out, never more
    assert lease_size(10, 12) == 0  # more granted than a (lowered) limit: nothing
    assert lease_size(1000, 0) == MAX_LEASE


async def test_processes_sharing_a_ledger_let_through_exactly_the_limit() -> None:
    _, ledger, processes = _limiters(3, limit=30)
    answers = [await processes[i % 3].hit("key") for i in range(90)]
    allowed = [i for i, wait in enumerate(answers) if wait is None]
    assert len(allowed) == 30  # cluster-wide: exactly the limit, once every lease is spent
    first_refused = answers.index(next(w for w in answers if w is not None))
    # early refusals only while another process holds an unspent lease: bounded by the slack
    assert first_refused >= 30 - 2 * MAX_LEASE
    assert all(wait is None or 0 < wait <= 60 for wait in answers)
    assert ledger.calls < 90


async def test_leases_keep_most_requests_off_the_database() -> None:
    _, ledger, (one,) = _limiters(1, limit=1000)
    assert all([await one.hit("key") is None for _ in range(1000)])
    assert await one.hit("key") is not None
    assert ledger.calls <= 1000 // MAX_LEASE + 40  # leases shrink near the limit


async def test_a_spent_window_is_refused_locally_until_it_ends_then_passes_again() -> None:
    clock, ledger, (one,) = _limiters(1, limit=3, window=10)
    assert [await one.hit("k") for _ in range(3)] == [None, None, None]
    assert await one.hit("k") == pytest.approx(10)
    calls = ledger.calls
    clock.now += 4
    assert await one.hit("k") == pytest.approx(6)
    assert ledger.calls == calls  # no round trip for a refusal until the window ends
    assert await one.hit("other") is None  # per key
    clock.now += 6
    assert await one.hit("k") is None  # a new window
    assert [await one.hit("k") for _ in range(2)] == [None, None]
    assert await one.hit("k") is not None


async def test_a_lease_ends_with_its_window() -> None:
    clock, ledger, (one,) = _limiters(1, limit=1000, window=10)
    assert await one.hit("k") is None  # a lease of 20 taken
    clock.now += 10
    assert await one.hit("k") is None
    assert ledger.calls == 2  # the old lease's rest is not spent in the new window
    assert ledger.windows[next(iter(ledger.windows))][1] == MAX_LEASE


async def test_one_request_per_key_asks_the_ledger_at_a_time() -> None:
    _, ledger, (one,) = _limiters(1, limit=1000)
    answers = await asyncio.gather(*(one.hit("k") for _ in range(50)))
    assert answers == [None] * 50
    assert ledger.most_in_flight == 1
    assert ledger.calls <= 5


async def test_a_failing_ledger_falls_back_to_local_counting_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ledger, (one,) = _limiters(1, limit=5)
    ledger.fail = OSError("connection refused")
    with caplog.at_level(logging.WARNING, logger="atoll.server"):
        answers = [await one.hit("k") for _ in range(7)]
    assert answers[:5] == [None] * 5 and all(w is not None for w in answers[5:])  # the local limit
    unavailable = [r for r in caplog.records if "ledger unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    ledger.fail = None
    with caplog.at_level(logging.WARNING, logger="atoll.server"):
        assert await one.hit("other") is None
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_a_ledger_that_does_not_answer_costs_at_most_the_timeout() -> None:
    clock = Clock()
    ledger = FakeLedger(clock)
    ledger.hang = True
    one = SharedRateLimiter(ledger, limit=2, window=60, clock=clock, timeout_s=0.05)
    assert await asyncio.wait_for(one.hit("k"), 5) is None
