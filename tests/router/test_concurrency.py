"""200 concurrent requests spread over 20 sandboxes, through the router, all answered by the
right sandbox (host routing for half of them, header routing on one shared host for the rest)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.router.conftest import invoke_url, start_app, via_router

pytestmark = pytest.mark.privileged
SANDBOXES = 20
PER_SANDBOX = 10


def test_200_concurrent_requests_over_20_sandboxes(
    http: httpx.Client, server: ServerProcess, no_leaks: None
) -> None:
    sandboxes: list[str] = []

    def create_one(_: int) -> str:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
            sandbox_id = str(api.create(client, memory=512)["id"])
            sandboxes.append(sandbox_id)
            start_app(client, sandbox_id, tag=sandbox_id)
            return sandbox_id

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create_one, range(SANDBOXES)))
        assert len(sandboxes) == SANDBOXES

        async def one(client: httpx.AsyncClient, sandbox_id: str, i: int) -> tuple[str, int, str]:
            if i % 2:
                path, headers = via_router(invoke_url(server, sandbox_id, f"/hello?i={i}"))
            else:
                path, headers = f"/hello?i={i}", {"atoll-sandbox-id": sandbox_id}
            started = time.monotonic()
            try:
                r = await client.get(path, headers={**headers, **server.headers})
            except httpx.HTTPError as exc:
                return sandbox_id, 0, f"{exc!r} after {time.monotonic() - started:.1f}s"
            return sandbox_id, r.status_code, r.text

        async def burst() -> list[tuple[str, int, str]]:
            limits = httpx.Limits(max_connections=SANDBOXES * PER_SANDBOX)
            async with httpx.AsyncClient(
                base_url=server.router_url, limits=limits, timeout=60, trust_env=False
            ) as c:
                return await asyncio.gather(*(one(c, s, i) for s in sandboxes for i in range(PER_SANDBOX)))

        results = asyncio.run(burst())
        assert len(results) == SANDBOXES * PER_SANDBOX
        failures = [r for r in results if r[1:] != (200, f"hello from 8080 {r[0]}")]
        assert not failures, failures[:5]
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: http.delete(f"/v1/sandbox/{s}/"), list(sandboxes)))
