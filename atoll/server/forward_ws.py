"""An API replica's WebSocket forwarding (``atoll.server.forward``): the client's WebSocket (a
terminal, a process's stream) is opened on the sandbox's node with the same path, credentials
and subprotocols, then messages are relayed both ways one at a time, and a close on either side
closes the other with its code. A node that refuses the upgrade (401, 404, 409 ...) has its
answer passed on as it is; one that does not answer is a 503."""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from atoll._exceptions import NodeUnreachable, status_for
from atoll.server import errors

CONNECT_TIMEOUT_S = 5.0
# one message is held at a time on its way through; the nodes' own WebSockets take no larger
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# close codes that name a condition and may not be sent in a close frame (RFC 6455 §7.4.1)
_NOT_SENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}
_SKIPPED = frozenset({b"host", b"connection", b"upgrade", b"keep-alive", b"te", b"transfer-encoding"})


async def relay(
    scope: Scope, receive: Receive, send: Send, address: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """``headers``: the client's, as the replica sends them on (``forward.to_node_headers``: its
    own cluster headers dropped, the replica's token added)."""
    if (await receive())["type"] != "websocket.connect":
        return
    path = scope["raw_path"].decode("latin-1")
    if scope.get("query_string"):
        path += "?" + scope["query_string"].decode("latin-1")
    try:
        upstream = await connect(
            "ws" + address.removeprefix("http") + path,
            additional_headers=_headers(headers),
            subprotocols=scope.get("subprotocols") or None,
            compression=None,  # relayed as they come: no second compression on the way
            proxy=None,  # the node, directly: never a proxy from the environment
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=None,  # the client's own keep-alives travel through
            user_agent_header=None,
        )
    except InvalidStatus as exc:  # the node refused: its answer is the client's
        answer = exc.response
        await _deny(
            scope, send, answer.status_code, bytes(answer.body or b""), answer.headers.get("content-type")
        )
        return
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        error = errors.http_error(NodeUnreachable(f"the sandbox's node at {address} did not answer: {exc}"))
        body = json.dumps(error.to_body()).encode()
        await _deny(scope, send, status_for(error), body, "application/json")
        return
    async with upstream:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
        await _pump(receive, send, upstream)


def _headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in headers
        if k.lower() not in _SKIPPED and not k.lower().startswith(b"sec-websocket-")
    ]


async def _pump(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    """Relay until either side closes, then close the other with that side's code."""
    to_node = asyncio.create_task(_client_to_node(receive, upstream))
    to_client = asyncio.create_task(_node_to_client(send, upstream))
    try:
        await asyncio.wait({to_node, to_client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_node, to_client):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                await task
    if to_client.done() and not to_client.cancelled() and to_client.exception() is None:
        code = upstream.close_code or 1000
        with contextlib.suppress(OSError, RuntimeError):  # the client may be gone as well
            await send({"type": "websocket.close", "code": _NOT_SENDABLE.get(code, code),
                        "reason": (upstream.close_reason or "")[:120]})  # fmt: skip


async def _client_to_node(receive: Receive, upstream: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = message.get("code") or 1000
            await upstream.close(_NOT_SENDABLE.get(code, code))
            return
        if message.get("text") is not None:
            await upstream.send(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send(message["bytes"])


async def _node_to_client(send: Send, upstream: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for data in upstream:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})


async def _deny(scope: Scope, send: Send, status: int, body: bytes, content_type: str | None) -> None:
    """Refuse the client's upgrade with the status (as an HTTP answer where the server can)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", content_type.encode())] if content_type else []
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": f"node answered {status}"})
