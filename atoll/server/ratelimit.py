"""Per-key API rate limit: at most ``limit`` requests per ``window`` seconds for each API key,
answered past that with 429, ``{"message"}`` and ``Retry-After`` (wire-protocol §10, §11: 1000
requests per 60 s by default).

One host (SQLite) counts in its memory (``atoll.server.ratelimit_local``); the processes of a
cluster (PostgreSQL) share one count per key through leases of a ledger in the database
(``atoll.server.rate_leases``, docs/cluster.md). Requests without a key pass through to
authentication (401); wrong keys are counted like right ones, which also slows down guessing.
A request that carries the cluster's own token (``atoll.server.cluster_auth``) was forwarded by
an API replica, which counted it already: it is not counted again."""

from __future__ import annotations

import json
import math

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from atoll.cluster.rate_ledger import RateLedger
from atoll.server.auth import key_from_headers
from atoll.server.cluster_auth import token_matches
from atoll.server.rate_leases import SharedRateLimiter
from atoll.server.ratelimit_local import RateLimiter

PREFIX = "/v1/"
EXEMPT = ("/v1/health",)  # unauthenticated liveness checks

__all__ = ["RateLimitMiddleware", "RateLimiter", "RateLimits"]


class RateLimits:
    """What the middleware counts with: this process's memory, until ``share`` (at start-up, on
    PostgreSQL) connects it to the cluster's ledger."""

    def __init__(self, *, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.local = RateLimiter(limit=limit, window=window)
        self.shared: SharedRateLimiter | None = None

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def share(self, engine: AsyncEngine) -> None:
        if not self.enabled or engine.dialect.name != "postgresql":
            return
        self.shared = SharedRateLimiter(RateLedger(engine), limit=self.limit, window=self.window)
        self.shared.start()

    async def hit(self, key: str) -> float | None:
        """Count one request of ``key``; None if allowed, else seconds until its window ends."""
        if self.shared is not None:
            return await self.shared.hit(key)
        return self.local.hit(key)

    async def close(self) -> None:
        shared, self.shared = self.shared, None
        if shared is not None:
            await shared.close()


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limits: RateLimits, cluster_token: str | None = None) -> None:
        self.app = app
        self.limits = limits
        self.cluster_token = cluster_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.limits.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        key = key_from_headers(Headers(scope=scope)) if path.startswith(PREFIX) else None
        if key is None or path in EXEMPT or self._forwarded(scope):
            await self.app(scope, receive, send)
            return
        wait = await self.limits.hit(key)
        if wait is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "message": f"rate limit exceeded: at most {self.limits.limit} requests per "
                f"{self.limits.window:g} s for one API key; retry after the Retry-After seconds"
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

    def _forwarded(self, scope: Scope) -> bool:
        """Sent on by an API replica, which counted it (the token compared in constant time)."""
        return self.cluster_token is not None and token_matches(HTTPConnection(scope), self.cluster_token)
