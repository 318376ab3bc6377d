"""The browser view: Debian's noVNC files at ``/`` (``/`` itself redirects to ``vnc.html`` with
autoconnect on), and ``/websockify``, a WebSocket relayed to the websockify process (the
supervised "novnc" part, which bridges to x11vnc). noVNC builds its WebSocket URL from the page's
own host, port and scheme, so the stream takes the same road as the page: through the router,
TLS and the API key check included."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .early import WEBSOCKIFY_PORT

log = logging.getLogger(__name__)

VIEWER = "vnc.html?autoconnect=true&reconnect=true&resize=scale&path=websockify"
OPEN_TIMEOUT_S = 5.0


async def index(request: Request) -> Response:
    return RedirectResponse(url=VIEWER, status_code=307)


async def websockify(websocket: WebSocket) -> None:
    offered = list(websocket.scope.get("subprotocols", []))
    subprotocol = "binary" if "binary" in offered else None
    try:
        upstream = await connect(
            f"ws://127.0.0.1:{WEBSOCKIFY_PORT}/",
            subprotocols=["binary"] if subprotocol else None,  # type: ignore[list-item]
            open_timeout=OPEN_TIMEOUT_S,
            max_size=None,
            compression=None,
        )
    except (OSError, TimeoutError, ConnectionClosed) as exc:
        log.warning("websockify is not reachable: %s", exc)
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=subprotocol)
    async with upstream:
        tasks = [
            asyncio.create_task(_downstream(upstream, websocket)),
            asyncio.create_task(_upstream(websocket, upstream)),
        ]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()


async def _downstream(upstream: ClientConnection, websocket: WebSocket) -> None:
    with contextlib.suppress(ConnectionClosed, WebSocketDisconnect, RuntimeError):
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)


async def _upstream(websocket: WebSocket, upstream: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed, WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await upstream.send(data)
            elif message.get("text") is not None:
                await upstream.send(message["text"])
