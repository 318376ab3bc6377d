"""API requests in flight, so that the warm pool's refills run in the lulls between them.

On a small host booting a warm sandbox costs the CPU of a create: started at once after a claim,
it slowed that very request's first command. (The disk and network-slot pools refill at once:
their refills are a few milliseconds of kernel work, and a sequential client that never pauses
would otherwise find them empty.) ``quiet`` returns when no request
has started or ended for ``grace_s``; a request running longer than ``long_s`` (a long
command, a streamed upload) no longer counts as busy, so refills are postponed, never starved."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

UNCOUNTED_PATHS = ("/v1/health",)  # polled by monitors and by clients waiting for pools


class Activity:
    def __init__(self, *, grace_s: float = 0.05, long_s: float = 1.0) -> None:
        self.grace_s = grace_s
        self.long_s = long_s
        self._started: dict[int, float] = {}  # request token -> start time
        self._tokens = itertools.count()
        self._last_end = 0.0

    def enter(self) -> int:
        token = next(self._tokens)
        self._started[token] = time.monotonic()
        return token

    def leave(self, token: int) -> None:
        self._started.pop(token, None)
        self._last_end = time.monotonic()

    def busy_for(self) -> float:
        """Seconds until the host may count as quiet (0: quiet now)."""
        now = time.monotonic()
        wait = self._last_end + self.grace_s - now
        for started in self._started.values():
            if now - started < self.long_s:
                wait = max(wait, min(self.grace_s, started + self.long_s - now))
        return max(0.0, wait)

    async def quiet(self) -> None:
        # polled: a refill checks a few times per lull, cheaper than waking on every request
        for _ in itertools.count():
            wait = self.busy_for()
            if wait <= 0:
                return
            await asyncio.sleep(wait)


class ActivityMiddleware:
    """Counts every HTTP request but the health check (pure ASGI: no per-request overhead
    beyond two dict operations)."""

    def __init__(self, app: ASGIApp, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        token = self.activity.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.activity.leave(token)
