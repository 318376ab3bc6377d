"""One sandbox: its metadata and URLs, a presigned-URL button, a terminal and a file browser.

The terminal is the API's PTY session (``atoll.server.pty``) relayed over a WebSocket that the
browser's session cookie authorizes (a browser cannot set the API's ``authorization`` header on
a WebSocket); the upgrade must come from this same origin, so another site cannot ride the
cookie. Files go through the filesystem API's own handlers (``atoll.server.routes.filesystem``),
so paths are resolved and confined exactly as there."""

from __future__ import annotations

import posixpath
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from atoll._exceptions import APIError, AuthenticationError, BadRequestError, ConflictError
from atoll.dashboard import observe_page, sessions
from atoll.dashboard.pages import checked_form, manager, signed_in
from atoll.dashboard.web import DashboardRoute, render
from atoll.server import fs_schemas
from atoll.server.revocable import close_when_revoked
from atoll.server.routes import filesystem, presigned
from atoll.server.routes import pty as pty_routes
from atoll.server.schemas import sandbox_body
from atoll.server.state import services

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
ws_router = APIRouter(include_in_schema=False)  # WebSockets: errors are close codes, not pages
VIEW_MAX_BYTES = 256 * 1024
PathQ = Annotated[str, Query(min_length=1, max_length=4096)]


def _urls(request: Request, sandbox_id: str) -> dict[str, str]:
    settings = services(request).settings
    domain = f"{settings.sandbox_host}:{settings.sandbox_url_port}"
    return {
        "invoke_url": f"{settings.sandbox_scheme}://{sandbox_id}.{domain}",
        "port_url": f"{settings.sandbox_scheme}://{sandbox_id}-<port>.{domain}",
    }


@router.get("/ui/sandboxes/{sandbox_id}")
async def sandbox_page(sandbox_id: str, request: Request) -> Response:
    session = signed_in(request)
    row = await manager(request).get(session.org_id, sandbox_id)
    page = render(
        request,
        "sandbox.html",
        sandbox=sandbox_body(row, with_policy=True),
        desktop=observe_page.is_desktop(row),
        **_urls(request, row.id),
    )
    return observe_page.allow_desktop_frame(request, row, page)


@router.post("/ui/sandboxes/{sandbox_id}/presigned")
async def presigned_url(sandbox_id: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    try:
        port = int(fields.get("port", ""))
    except ValueError:
        raise BadRequestError("port: must be a number from 1 to 65535") from None
    body = presigned.PresignedUrlBody(port=port, expires_in=3600)
    created = await presigned.create_presigned_url(sandbox_id, body, session.org_id, request)
    return render(request, "_presigned.html", created=created)


# terminal -----------------------------------------------------------------------------------
@router.post("/ui/sandboxes/{sandbox_id}/pty")
async def create_pty(sandbox_id: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    ptys = services(request).ptys
    cols = min(max(_int(fields.get("cols"), 80), 1), 1000)
    rows = min(max(_int(fields.get("rows"), 24), 1), 1000)
    created = await ptys.create(
        session.org_id, sandbox_id, session_id=None, cols=cols, rows=rows, cwd=None, envs={}, lazy_start=False
    )
    return JSONResponse({"id": created.id, "url": f"/ui/sandboxes/{sandbox_id}/pty/{created.id}/connect"})


@router.post("/ui/sandboxes/{sandbox_id}/pty/{session_id}/resize")
async def resize_pty(sandbox_id: str, session_id: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    ptys = services(request).ptys
    cols = min(max(_int(fields.get("cols"), 80), 1), 1000)
    rows = min(max(_int(fields.get("rows"), 24), 1), 1000)
    await ptys.resize(session.org_id, sandbox_id, session_id, cols=cols, rows=rows)
    return Response(status_code=204)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value or "")
    except ValueError:
        return default


def _same_origin(websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc == websocket.headers.get("host")


@ws_router.websocket("/ui/sandboxes/{sandbox_id}/pty/{session_id}/connect")
async def connect_pty(websocket: WebSocket, sandbox_id: str, session_id: str) -> None:
    ptys = services(websocket).ptys
    store = getattr(websocket.app.state, "dashboard_sessions", None)
    signed = store.get(websocket.cookies.get(sessions.SESSION_COOKIE)) if store else None
    try:
        if signed is None or not _same_origin(websocket):
            raise AuthenticationError("sign in to the dashboard first (same origin only)")
        pty = await ptys.get(signed.org_id, sandbox_id, session_id)
        if pty.ended:
            raise ConflictError(f"PTY session {pty.id!r} has ended")
        await ptys.ensure_started(signed.org_id, pty)
    except APIError as exc:
        await pty_routes._deny(websocket, exc)
        return
    await websocket.accept()
    try:
        await ptys.attach(pty, websocket)
        relay = pty_routes._relay_input(ptys, pty, websocket)
        # closed (1008) when the key the session signed in with is revoked
        await close_when_revoked(websocket, relay, key_hash=signed.key_hash)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        ptys.detach(pty, websocket)


# files --------------------------------------------------------------------------------------
def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) or "/"


@router.get("/ui/sandboxes/{sandbox_id}/files")
async def list_files(sandbox_id: str, request: Request, path: str = "") -> Response:
    session = signed_in(request)
    if not path:
        path = (await filesystem.workdir(sandbox_id, session.org_id, request))["workdir"]
    listed = await filesystem.ls(sandbox_id, fs_schemas.LsBody(path=path), session.org_id, request)
    items: list[dict[str, Any]] = sorted(listed["items"], key=lambda i: (not i["is_dir"], i["name"]))
    return render(
        request,
        "_files.html",
        sandbox_id=sandbox_id,
        path=path,
        parent=_parent(path),
        items=items,
        quote=quote,
    )


@router.get("/ui/sandboxes/{sandbox_id}/files/view")
async def view_file(sandbox_id: str, request: Request, path: PathQ) -> Response:
    session = signed_in(request)
    body = fs_schemas.ReadFileBody(path=path, limit=VIEW_MAX_BYTES)
    streamed = await filesystem.read_file(sandbox_id, body, session.org_id, request)
    data = b"".join([chunk async for chunk in streamed.body_iterator])
    text = data.decode("utf-8", "replace")
    return render(request, "_view.html", path=path, text=text, truncated=len(data) >= VIEW_MAX_BYTES)


@router.get("/ui/sandboxes/{sandbox_id}/files/download")
async def download_file(sandbox_id: str, request: Request, path: PathQ) -> Response:
    session = signed_in(request)
    body = fs_schemas.ReadFileBody(path=path)
    response: Response = await filesystem.read_file(sandbox_id, body, session.org_id, request)
    name = posixpath.basename(path.rstrip("/")) or "file"
    response.headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    response.headers["x-content-type-options"] = "nosniff"
    return response


@router.post("/ui/sandboxes/{sandbox_id}/files/upload")
async def upload_file(sandbox_id: str, request: Request, path: PathQ) -> Response:
    """The body is the file's bytes (sent by the page's script), streamed to the sandbox."""
    session = signed_in(request)
    sessions.check_csrf(session, request)
    await filesystem.write_file(sandbox_id, session.org_id, request, path=path)
    return Response(status_code=204)


@router.post("/ui/sandboxes/{sandbox_id}/files/delete")
async def delete_file(sandbox_id: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    path = fields.get("path", "")
    body = fs_schemas.DeleteBody(path=path, recursive=True)
    await filesystem.delete(sandbox_id, body, session.org_id, request)
    return await list_files(sandbox_id, request, path=_parent(path))
