"""A per-key fixed window counted in this process's memory: the API rate limit of one host
(SQLite), and what a cluster's process falls back to while the shared ledger does not answer
(``atoll.server.rate_leases``).

A window per key, opened by the key's first request: counting is one dict look-up and the memory
is one small entry per key seen in the last window (keys are held as their SHA-256, never raw)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_KEYS = 100_000  # beyond this, expired windows are swept before a new key is added


@dataclass(slots=True)
class _Window:
    opened: float
    count: int


class RateLimiter:
    """The counting, apart from ASGI (unit-testable with a fake clock)."""

    def __init__(self, *, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[bytes, _Window] = {}

    def hit(self, key: str) -> float | None:
        """Count one request of ``key``; None if allowed, else seconds until its window ends."""
        now = self.clock()
        digest = hashlib.sha256(key.encode()).digest()
        current = self._windows.get(digest)
        if current is None or now - current.opened >= self.window:
            if current is None and len(self._windows) >= MAX_TRACKED_KEYS:
                self._sweep(now)
            self._windows[digest] = _Window(now, 1)
            return None
        if current.count >= self.limit:
            return current.opened + self.window - now
        current.count += 1
        return None

    def _sweep(self, now: float) -> None:
        self._windows = {k: w for k, w in self._windows.items() if now - w.opened < self.window}
        if len(self._windows) >= MAX_TRACKED_KEYS:  # all live: forget the oldest half
            oldest = sorted(self._windows.items(), key=lambda item: item[1].opened)
            self._windows = dict(oldest[len(oldest) // 2 :])
