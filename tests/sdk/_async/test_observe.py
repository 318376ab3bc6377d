"""``sandbox.filesystem.watch`` and ``sandbox.metrics`` against a fake control plane: events
decoded as they arrive (frames split anywhere, keep-alives skipped), the request's parameters,
samples decoded and checked, bad input refused before any request."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from atoll import AsyncClient, InvalidArgument, MalformedResponseError, MetricsSample, WatchEvent
from atoll.sdk._async.sandbox import AsyncSandbox

from .._mock import Chunks, Router, sandbox_json

SID = "sbx-abc123"
SAMPLE = {
    "timestamp": "2026-01-01T00:00:05+00:00",
    "cpu_count": 2,
    "cpu_used_pct": 50.0,
    "mem_used_mib": 300.5,
    "mem_total_mib": 1024.0,
    "disk_used_mib": 12.0,
    "disk_total_mib": 1024.0,
    "net_rx_bytes": 10,
    "net_tx_bytes": 20,
    "pids": 3,
}


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
    )


async def created(router: Router) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router).sandboxes.create(template_name="base")


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]


async def test_watch_yields_events_as_they_arrive() -> None:
    router = Router()
    sandbox = await created(router)
    frames = sse(
        {"type": "create", "path": "/w/a", "is_dir": False},
        {"type": "rename", "path": "/w/a", "is_dir": False, "new_path": "/w/b"},
        {"type": "overflow"},
    )
    chunks = [frames[0][:9], frames[0][9:] + b": keepalive\n\n", frames[1], frames[2]]
    router.handle(
        "GET",
        f"/v1/sandbox/{SID}/filesystem/watch",
        lambda _: httpx.Response(200, stream=Chunks(chunks), headers={"content-type": "text/event-stream"}),
    )
    got = [event async for event in sandbox.filesystem.watch("/w", recursive=True)]
    assert got == [
        WatchEvent(type="create", path="/w/a", is_dir=False),
        WatchEvent(type="rename", path="/w/a", is_dir=False, new_path="/w/b"),
        WatchEvent(type="overflow"),
    ]
    assert dict(router.last.url.params) == {"path": "/w", "recursive": "true"}


async def test_watch_refuses_an_empty_path_and_a_malformed_event() -> None:
    router = Router()
    sandbox = await created(router)
    with pytest.raises(InvalidArgument):
        async for _ in sandbox.filesystem.watch(""):
            pass
    router.handle(
        "GET",
        f"/v1/sandbox/{SID}/filesystem/watch",
        lambda _: httpx.Response(200, stream=Chunks([b"data: [1]\n\n"])),
    )
    with pytest.raises(MalformedResponseError):
        async for _ in sandbox.filesystem.watch("/w"):
            pass


async def test_metrics_decodes_samples_and_sends_since() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("GET", f"/v1/sandbox/{SID}/metrics", json={"items": [SAMPLE]})
    got = await sandbox.metrics()
    assert got == [MetricsSample(**SAMPLE)]
    since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    await sandbox.metrics(since=since)
    assert router.last.url.params["since"] == since.isoformat()
    with pytest.raises(InvalidArgument):
        await sandbox.metrics(since=dt.datetime(2026, 1, 1))  # no zone: ambiguous


async def test_metrics_refuses_a_malformed_answer() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("GET", f"/v1/sandbox/{SID}/metrics", json={"items": [{"timestamp": "x"}]})
    with pytest.raises(MalformedResponseError):
        await sandbox.metrics()
