"""Watching and measuring a sandbox (``spec/processes.md``): the requests behind
``sandbox.filesystem.watch`` (an event stream of changes) and ``sandbox.metrics``."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from atoll._exceptions import InvalidArgument
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._files import check_path
from atoll.sdk._observe_models import MetricsSample, WatchEvent, samples
from atoll.sdk._sse import SSEDecoder
from atoll.sdk._validation import sandbox_path
from atoll.sdk.models import SandboxRef, json_object


async def watch(
    transport: AsyncTransport,
    sandbox: SandboxRef,
    path: str,
    *,
    recursive: bool = False,
    http_timeout: float | None = None,
) -> AsyncIterator[WatchEvent]:
    """Changes below the directory ``path`` as they happen, until the caller stops iterating
    (or the directory goes away). Idle streams carry keep-alives every 15 s."""
    params = {"path": check_path("path", path), "recursive": "true" if recursive else "false"}
    decoder = SSEDecoder()
    async with transport.stream(
        "GET", sandbox_path(sandbox, "/filesystem/watch"), params=params, timeout=http_timeout
    ) as response:
        async for chunk in response.aiter_bytes():
            for payload in decoder.feed(chunk):
                yield WatchEvent.from_json(payload)
    for payload in decoder.close():
        yield WatchEvent.from_json(payload)


def _since(value: dt.datetime | str | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidArgument("since", "must carry a time zone (e.g. datetime.now(timezone.utc))")
        return {"since": value.isoformat()}
    if isinstance(value, str) and value:
        return {"since": value}
    raise InvalidArgument("since", f"must be a datetime or an ISO 8601 string, got {value!r}")


async def metrics(
    transport: AsyncTransport,
    sandbox: SandboxRef,
    *,
    since: dt.datetime | str | None = None,
    http_timeout: float | None = None,
) -> list[MetricsSample]:
    """The samples the server kept (every few seconds while the sandbox ran), oldest first."""
    response = await transport.request(
        "GET", sandbox_path(sandbox, "/metrics"), params=_since(since), timeout=http_timeout
    )
    return samples(json_object(response.content))
