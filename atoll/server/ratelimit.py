"""Per-key API rate limit: at most ``limit`` requests per ``window`` seconds for each API key,
answered past that with 429, ``{"message"}`` and ``Retry-After`` (wire-protocol §10, §11: 1000
requests per 60 s by default).

A fixed window per key, opened by the key's first request: counting is one dict look-up and
the memory is one small entry per key seen in the last window (keys are held as their SHA-256,
never raw). Requests without a key pass through to authentication (401); wrong keys are counted
like right ones, which also slows down guessing. In memory, per server process."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from atoll.server.auth import key_from_headers

PREFIX = "/v1/"
EXEMPT = ("/v1/health",)  # unauthenticated liveness checks
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


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int, window: float) -> None:
        self.app = app
        self.limiter = RateLimiter(limit=limit, window=window) if limit > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limiter is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        key = key_from_headers(Headers(scope=scope)) if path.startswith(PREFIX) else None
        wait = self.limiter.hit(key) if key is not None and path not in EXEMPT else None
        if wait is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "message": f"rate limit exceeded: at most {self.limiter.limit} requests per "
                f"{self.limiter.window:g} s for one API key; retry after the Retry-After seconds"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(wait))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
