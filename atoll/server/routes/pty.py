"""PTY endpoints (wire-protocol §9): sessions by REST, terminal bytes over a WebSocket.

``/v1/sandbox/{id}/pty/{sid}/connect`` carries raw terminal bytes in binary frames both ways
(text frames are accepted and sent as UTF-8). The API key goes in the upgrade request's
``authorization`` or ``leap0-authorization`` header, like every other call. A socket with no
traffic either way for ``IDLE_TIMEOUT_S`` is closed; the session itself stays.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from atoll._exceptions import APIError, AuthenticationError, ConflictError, status_for
from atoll.server import response_models as rm
from atoll.server.auth import key_from_headers, require_org
from atoll.server.pty import PtyManager, PtySession
from atoll.server.response_models import answers
from atoll.server.revocable import close_when_revoked
from atoll.server.schemas import EnvVars
from atoll.server.state import services

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}/pty", tags=["pty"])
Org = Annotated[str, Depends(require_org)]
IDLE_TIMEOUT_S = 300.0
SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~:@+=-]+$")]
Size = Annotated[int, Field(ge=1, le=1000, strict=True)]


class CreatePtyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: SessionId | None = None
    cols: Size = 80
    rows: Size = 24
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    envs: EnvVars | None = None
    lazy_start: bool = False


class ResizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cols: Size
    rows: Size


def ptys(request: Request) -> PtyManager:
    return services(request).ptys


@router.get("", **answers(rm.PtyList))
@router.get("/", include_in_schema=False, **answers(rm.PtyList))
async def list_sessions(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    return {"items": [s.info() for s in await ptys(request).sessions(org, sandbox_id)]}


@router.post("", status_code=201, **answers(rm.PtySession))
@router.post("/", status_code=201, include_in_schema=False, **answers(rm.PtySession))
async def create_session(sandbox_id: str, body: CreatePtyBody, org: Org, request: Request) -> dict[str, Any]:
    session = await ptys(request).create(
        org,
        sandbox_id,
        session_id=body.id,
        cols=body.cols,
        rows=body.rows,
        cwd=body.cwd,
        envs=dict(body.envs or {}),
        lazy_start=body.lazy_start,
    )
    return session.info()


@router.get("/{session_id}", **answers(rm.PtySession))
@router.get("/{session_id}/", include_in_schema=False, **answers(rm.PtySession))
async def get_session(sandbox_id: str, session_id: str, org: Org, request: Request) -> dict[str, Any]:
    return (await ptys(request).get(org, sandbox_id, session_id)).info()


@router.delete("/{session_id}", status_code=204)
@router.delete("/{session_id}/", status_code=204, include_in_schema=False)
async def delete_session(sandbox_id: str, session_id: str, org: Org, request: Request) -> Response:
    await ptys(request).delete(org, sandbox_id, session_id)
    return Response(status_code=204)


@router.post("/{session_id}/resize", **answers(rm.PtySession))
@router.post("/{session_id}/resize/", include_in_schema=False, **answers(rm.PtySession))
async def resize_session(
    sandbox_id: str, session_id: str, body: ResizeBody, org: Org, request: Request
) -> dict[str, Any]:
    session = await ptys(request).resize(org, sandbox_id, session_id, cols=body.cols, rows=body.rows)
    return session.info()


async def _deny(websocket: WebSocket, error: APIError) -> None:
    """Refuse the upgrade with the error's HTTP status and JSON body, where the server can."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error.to_body(), status_code=status_for(error)))
    else:
        await websocket.close(code=1008, reason=error.message[:120])


async def _authorize(websocket: WebSocket) -> str:
    raw = key_from_headers(websocket.headers)
    if raw is None:
        raise AuthenticationError("missing API key: send 'authorization: Bearer <key>'")
    org_id = await services(websocket).repo.org_for_key(raw)
    if org_id is None:
        raise AuthenticationError("invalid API key")
    return str(org_id)


@router.websocket("/{session_id}/connect")
@router.websocket("/{session_id}/connect/")
async def connect(websocket: WebSocket, sandbox_id: str, session_id: str) -> None:
    manager = services(websocket).ptys
    try:
        org = await _authorize(websocket)
        session = await manager.get(org, sandbox_id, session_id)
        if session.ended:
            raise ConflictError(f"PTY session {session.id!r} has ended (exit status {session.exit_code})")
        await manager.ensure_started(org, session)
    except APIError as exc:
        await _deny(websocket, exc)
        return
    await websocket.accept()
    try:
        await manager.attach(session, websocket)
        # closed (1008) when the key that opened it is revoked
        await close_when_revoked(websocket, _relay_input(manager, session, websocket))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left while output was replayed to it
    finally:
        manager.detach(session, websocket)


async def _relay_input(manager: PtyManager, session: PtySession, websocket: WebSocket) -> None:
    while not session.ended:
        remaining = IDLE_TIMEOUT_S - (time.monotonic() - session.activity)
        try:
            message = await asyncio.wait_for(websocket.receive(), max(remaining, 0.01))
        except TimeoutError:
            await websocket.close(code=1000, reason="idle timeout")
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None and message.get("text") is not None:
            data = message["text"].encode()
        if data:
            await manager.write(session, data)
