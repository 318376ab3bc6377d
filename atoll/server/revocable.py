"""Streams that end when the API key that opened them is revoked (``atoll.store.key_streams``):
an SSE body stops (the response ends), a WebSocket is closed with 1008 (policy violation).

API routes pass the request or WebSocket (its key is in the headers); the dashboard passes the
hash of the key its session signed in with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from atoll.server.auth import key_from_headers
from atoll.server.state import services
from atoll.store.repo import hash_key

T = TypeVar("T")
REVOKED_CLOSE_CODE = 1008  # policy violation
REVOKED_REASON = "the API key was revoked"


def key_hash_of(connection: HTTPConnection) -> str:
    """The hash of the key in the headers (routes call this after authenticating them)."""
    raw = key_from_headers(connection.headers)
    return hash_key(raw or "")


async def until_revoked(
    connection: HTTPConnection, chunks: AsyncIterator[T], key_hash: str | None = None
) -> AsyncIterator[T]:
    """``chunks`` until they end or the key is revoked; then they are closed."""
    streams = services(connection).repo.key_streams
    digest = key_hash if key_hash is not None else key_hash_of(connection)
    with streams.opened(digest) as revoked:
        waiter = asyncio.ensure_future(revoked.wait())
        following: asyncio.Future[T] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(chunks))
                await asyncio.wait({following, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    return  # revoked
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                following = None
                yield item
        finally:
            waiter.cancel()
            # a read still waiting (revoked, or the client left) is cancelled inside ``chunks``,
            # so its own clean-up (e.g. a watch's slot) runs before this returns
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await following
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def close_when_revoked(
    websocket: WebSocket, work: Coroutine[Any, Any, None], key_hash: str | None = None
) -> None:
    """Run ``work`` (what serves an accepted WebSocket); when the key is revoked first, cancel
    it and close the socket with 1008."""
    streams = services(websocket).repo.key_streams
    digest = key_hash if key_hash is not None else key_hash_of(websocket)
    with streams.opened(digest) as revoked:
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(revoked.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.cancelled():
            task.result()  # what it raised, if anything
            return
        with contextlib.suppress(Exception):
            await websocket.close(code=REVOKED_CLOSE_CODE, reason=REVOKED_REASON)
