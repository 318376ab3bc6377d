"""``WS /v1/sandbox/{id}/process/{pid}/connect`` (``spec/processes.md``): a process's event
stream and its stdin on one WebSocket.

Server to client: one text frame per event, the same JSON as the SSE stream's ``data:`` lines
(``?since=N`` and ``?binary=1`` as there); the socket closes (1000) after ``exit``. Client to
server: a text frame ``{"data": "...", "eof": false}`` (either key optional) or a binary frame
of raw bytes goes to the process's stdin; a refused one (started without stdin: 409, ended,
malformed) is answered with ``{"type": "error", "status": N, "message": "..."}`` and the socket
stays open. Authenticated like every call (``authorization`` header); a bad key, sandbox or pid
refuses the upgrade with the HTTP error where the server can, else closes with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from atoll._exceptions import APIError, BadRequestError, status_for
from atoll.server.processes import ProcessService
from atoll.server.revocable import close_when_revoked
from atoll.server.routes.pty import _authorize, _deny
from atoll.server.state import services

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}/process", tags=["process"])
MAX_STDIN_FRAME = 1 << 20


def _service(websocket: WebSocket) -> ProcessService:
    return services(websocket).processes


def _stdin_of(message: Mapping[str, Any]) -> tuple[bytes, bool]:
    if message.get("bytes") is not None:
        return bytes(message["bytes"]), False
    try:
        body = json.loads(message.get("text") or "")
    except ValueError:
        body = None
    data, eof = (body.get("data", ""), body.get("eof", False)) if isinstance(body, dict) else (None, None)
    if not isinstance(data, str) or not isinstance(eof, bool):
        raise BadRequestError(
            "invalid stdin frame", errors=[{"field": "data", "error": 'send {"data": "...", "eof": false}'}]
        )
    return data.encode("utf-8", "surrogateescape"), eof


@router.websocket("/{pid}/connect")
async def connect(
    websocket: WebSocket,
    sandbox_id: str,
    pid: int,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
    binary: bool = False,
) -> None:
    service = _service(websocket)
    try:
        org = await _authorize(websocket)
        stream = await service.open_events(org, sandbox_id, pid, since, binary=binary)
    except APIError as exc:
        await _deny(websocket, exc)
        return
    await websocket.accept()
    # closed (1008) when the key that opened it is revoked
    await close_when_revoked(websocket, _serve(websocket, service, org, sandbox_id, pid, stream))


async def _serve(
    websocket: WebSocket, service: ProcessService, org: str, sandbox_id: str, pid: int, stream: Any
) -> None:
    sender = asyncio.create_task(_send_events(websocket, stream))
    try:
        while not sender.done():
            receiving = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receiving, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                break
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                break
            await _feed(websocket, service, org, sandbox_id, pid, message)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _feed(
    websocket: WebSocket,
    service: ProcessService,
    org: str,
    sandbox_id: str,
    pid: int,
    message: Mapping[str, Any],
) -> None:
    try:
        if len(message.get("bytes") or message.get("text") or "") > MAX_STDIN_FRAME:
            raise BadRequestError(
                "stdin frame too large", errors=[{"field": "data", "error": "at most 1 MiB"}]
            )
        data, eof = _stdin_of(message)
        await service.send_stdin(org, sandbox_id, pid, data, eof=eof)
    except APIError as exc:
        error = {"type": "error", "status": status_for(exc), "message": exc.message}
        await websocket.send_text(json.dumps(error))


async def _send_events(websocket: WebSocket, stream: Any) -> None:
    async for frame in stream:
        if frame.startswith(b"data: "):
            await websocket.send_text(frame[6:].strip().decode())
    await websocket.close(code=1000)
