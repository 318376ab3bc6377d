"""Sandbox state changes pushed to open dashboards (server-sent events).

The repository every sandbox write goes through already tells listeners which sandbox changed
(``atoll.store.observed.ObservedRepository``, how the router drops its cache). One listener here wakes
every open stream; each stream then re-renders its own organisation's rows and sends them only
when they differ, so a change in another organisation reveals nothing. Streams are bounded in
number and in length: the browser's EventSource reconnects by itself, and a short stream also
lets the server stop without waiting out its graceful-shutdown timeout for open dashboards
(uvicorn does not tell streaming responses that it is stopping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from atoll.store.observed import ObservedRepository

MAX_STREAMS = 200
STREAM_MAX_S = 5.0
COALESCE_S = 0.03  # a transition writes twice in a row: render once


class ChangeHub:
    def __init__(self, repo: ObservedRepository) -> None:
        self._wakers: set[asyncio.Event] = set()
        repo.subscribe(self._changed)

    def _changed(self, _sandbox_id: str) -> None:
        for waker in self._wakers:
            waker.set()

    @property
    def full(self) -> bool:
        return len(self._wakers) >= MAX_STREAMS

    async def stream(self, render: Callable[[], Awaitable[str]]) -> AsyncIterator[str]:
        """SSE frames: ``rows`` events with the rendered HTML at once (what changed while the
        browser reconnected) and then whenever it changes."""
        waker = asyncio.Event()
        self._wakers.add(waker)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + STREAM_MAX_S
        try:
            last = await render()
            yield "retry: 250\n\n" + _event(last)
            while (left := ends_at - loop.time()) > 0:
                try:
                    await asyncio.wait_for(waker.wait(), left)
                except TimeoutError:
                    return
                await asyncio.sleep(COALESCE_S)
                waker.clear()
                html = await render()
                if html != last:
                    last = html
                    yield _event(html)
        finally:
            self._wakers.discard(waker)


def _event(html: str) -> str:
    return "event: rows\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"


def hub_for(state: object, repo: ObservedRepository) -> ChangeHub:
    """The dashboard's one hub, made on first use and kept on the app's ``state``."""
    hub: ChangeHub | None = getattr(state, "dashboard_hub", None)
    if hub is None:
        hub = ChangeHub(repo)
        state.dashboard_hub = hub  # type: ignore[attr-defined]
    return hub
