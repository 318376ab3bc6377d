"""The API rate limit across a cluster's processes (docs/cluster.md): each process spends leases
of a key's window taken from the shared ledger (``atoll.cluster.rate_ledger``), so the
cluster-wide count is exact (the ledger never grants more than the limit in a window) while most
requests cost no round trip to the database.

What a client can see: never more than the limit per window, cluster-wide; a 429 a little early
when another process holds an unspent lease of the key's window (at most ``MAX_LEASE`` requests
per other process that served the key, fewer near the limit, where leases shrink to a quarter
of what is left). A database that fails or does not answer within ``LEASE_TIMEOUT_S`` never
fails the request: the process counts on its own (``fallback``), logging it once until the
database answers again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from atoll._tasks import cancel_and_wait
from atoll.cluster.rate_ledger import SWEEP_BATCH, Grant
from atoll.server.ratelimit_local import MAX_TRACKED_KEYS, RateLimiter

log = logging.getLogger("atoll.server")
LEASE_TIMEOUT_S = 3.0  # past this the request is counted locally rather than kept waiting
SWEEP_INTERVAL_S = 60.0  # how often a process offers to sweep ended windows (one sweeps at a time)


class Ledger(Protocol):
    async def lease(self, key_hash: str, *, limit: int, window_s: float) -> Grant: ...

    async def sweep(self) -> int: ...


@dataclass(slots=True)
class _Lease:
    ends: float  # this process's clock: when the window the lease belongs to ends, or earlier
    left: int  # requests of the lease not yet spent
    spent_window: bool  # the ledger granted nothing: the window is spent until ``ends``


class _Ask:
    """The lease in hand cannot decide: ask the ledger."""


ASK = _Ask()


class SharedRateLimiter:
    def __init__(
        self,
        ledger: Ledger,
        *,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = LEASE_TIMEOUT_S,
    ) -> None:
        self.ledger = ledger
        self.limit = limit
        self.window = window
        self.clock = clock
        self.timeout_s = timeout_s
        self.fallback = RateLimiter(limit=limit, window=window, clock=clock)
        self._leases: dict[str, _Lease] = {}
        self._asking: dict[str, asyncio.Event] = {}  # keys whose lease is being asked for now
        self._failing = False
        self._sweeper: asyncio.Task[None] | None = None

    async def hit(self, key: str) -> float | None:
        """Count one request of ``key``; None if allowed, else seconds until its window ends."""
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        while True:
            spent = self._spend(key_hash)
            if not isinstance(spent, _Ask):
                return spent
            asking = self._asking.get(key_hash)
            if asking is None:
                break
            await asking.wait()  # one request per key asks at a time: its lease may serve this one
        done = self._asking[key_hash] = asyncio.Event()
        try:
            return await self._take_lease(key, key_hash)
        finally:
            del self._asking[key_hash]
            done.set()

    def _spend(self, key_hash: str) -> float | _Ask | None:
        """From the lease in hand: None (allowed), the seconds to wait (refused), or ``ASK``."""
        now = self.clock()
        held = self._leases.get(key_hash)
        if held is None or now >= held.ends:
            return ASK
        if held.left > 0:
            held.left -= 1
            return None
        return held.ends - now if held.spent_window else ASK

    async def _take_lease(self, key: str, key_hash: str) -> float | None:
        asked = self.clock()  # the lease ends no later than the window, whatever the round trip
        try:
            async with asyncio.timeout(self.timeout_s):
                grant = await self.ledger.lease(key_hash, limit=self.limit, window_s=self.window)
        except Exception:  # the database is down or slow: count here rather than fail the request
            if not self._failing:
                log.warning("rate limit ledger unavailable: counting in this process only", exc_info=True)
                self._failing = True
            return self.fallback.hit(key)
        if self._failing:
            log.warning("rate limit ledger answers again: counting across the cluster")
            self._failing = False
        if len(self._leases) >= MAX_TRACKED_KEYS and key_hash not in self._leases:
            self._forget_ended(asked)
        ends = asked + max(0.0, grant.seconds_left)
        self._leases[key_hash] = _Lease(ends, max(0, grant.lease - 1), spent_window=grant.lease <= 0)
        if grant.lease > 0:
            return None
        return max(0.0, ends - self.clock())

    def _forget_ended(self, now: float) -> None:
        self._leases = {k: v for k, v in self._leases.items() if now < v.ends}
        if len(self._leases) >= MAX_TRACKED_KEYS:  # all live: forget those ending soonest
            by_end = sorted(self._leases.items(), key=lambda item: item[1].ends)
            self._leases = dict(by_end[len(by_end) // 2 :])

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="rate limit sweep")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                while await self.ledger.sweep() >= SWEEP_BATCH:
                    pass
            except Exception:  # a database that fails is logged by the requests' fallback
                log.debug("sweeping ended rate windows failed", exc_info=True)

    async def close(self) -> None:
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)
