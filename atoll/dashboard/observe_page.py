"""One sandbox, observed: live CPU and memory graphs, its processes and their output, and the
desktop view of desktop sandboxes.

Each goes through the API's own handlers with the session's org: the metrics route's samples
(``GET /v1/sandbox/{id}/metrics``), the live-process service (``atoll.server.processes``: list,
and the event stream relayed as it is, so the page reads the API's SSE frames), and a presigned
URL of the desktop service's port for the noVNC page (a frame cannot send the API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from atoll._exceptions import ConflictError
from atoll._states import State
from atoll.dashboard.pages import checked_form, manager, signed_in
from atoll.dashboard.web import DashboardRoute, render
from atoll.server.revocable import until_revoked
from atoll.server.routes import observe, presigned
from atoll.server.routes import process as process_routes
from atoll.server.state import services
from atoll.store.models import SandboxRow

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
DESKTOP_TEMPLATE_PREFIX = "system/desktop:"  # atoll.templates.desktop.NAME
DESKTOP_PORT = 6080  # atoll.templates.desktop.PORT: the noVNC page
DESKTOP_URL_EXPIRES_S = 3600
SinceQ = Annotated[str | None, Query(max_length=64)]


def is_desktop(row: SandboxRow) -> bool:
    return row.template_name.startswith(DESKTOP_TEMPLATE_PREFIX)


def desktop_frame_src(request: Request) -> str:
    """The CSP source of presigned sandbox URLs (``{scheme}://{token}.{domain}[:{port}]``)."""
    settings = services(request).settings
    domain = settings.presigned_domain or settings.sandbox_host
    default = {"http": 80, "https": 443}.get(settings.sandbox_scheme)
    port = "" if settings.sandbox_url_port == default else f":{settings.sandbox_url_port}"
    return f"{settings.sandbox_scheme}://*.{domain}{port}"


@router.get("/ui/sandboxes/{sandbox_id}/metrics")
async def metrics(sandbox_id: str, request: Request, since: SinceQ = None) -> Response:
    """The API's samples (JSON) for the page's graphs, which poll this every interval."""
    session = signed_in(request)
    body = await observe.metrics(sandbox_id, session.org_id, request, since)
    settings = services(request).settings
    body["interval_s"] = settings.metrics_interval_s
    return JSONResponse(body, headers={"cache-control": "no-store"})


@router.get("/ui/sandboxes/{sandbox_id}/processes")
async def processes(sandbox_id: str, request: Request) -> Response:
    """The sandbox's processes (a fragment the page refreshes); none while it is not running."""
    session = signed_in(request)
    row = await manager(request).get(session.org_id, sandbox_id)
    items: list[dict[str, object]] = []
    note = None
    if row.state == State.RUNNING:
        try:
            items = await process_routes.service(request).list(session.org_id, sandbox_id)
        except ConflictError as exc:  # it stopped or paused meanwhile
            note = exc.message
    else:
        note = f"the sandbox is {row.state}: its processes are listed while it runs"
    return render(request, "_processes.html", sandbox_id=row.id, items=items, note=note)


@router.get("/ui/sandboxes/{sandbox_id}/processes/{pid}/events")
async def process_events(
    sandbox_id: str,
    pid: int,
    request: Request,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> Response:
    """The process's output as the API streams it (SSE of ``{"type","seq","data"}``), from
    what its ring still holds, live until ``exit``."""
    session = signed_in(request)
    if not 1 <= pid <= 2**31 - 1:
        return Response("pid out of range\n", status_code=400, media_type="text/plain")
    stream = await process_routes.service(request).open_events(
        session.org_id, sandbox_id, pid, since, binary=False, follow=True
    )
    body = until_revoked(request, stream, key_hash=session.key_hash)  # ends with the session's key
    return StreamingResponse(body, media_type="text/event-stream", headers=process_routes.SSE_HEADERS)


@router.post("/ui/sandboxes/{sandbox_id}/desktop")
async def desktop(sandbox_id: str, request: Request) -> Response:
    """A presigned URL of the desktop's noVNC page, shown in a frame of the page."""
    session, _ = await checked_form(request)
    row = await manager(request).get(session.org_id, sandbox_id)
    if not is_desktop(row):
        raise ConflictError(f"{row.id} has no desktop (template {row.template_name})")
    body = presigned.PresignedUrlBody(port=DESKTOP_PORT, expires_in=DESKTOP_URL_EXPIRES_S)
    created = await presigned.create_presigned_url(row.id, body, session.org_id, request)
    return render(request, "_desktop.html", url=str(created["url"]).rstrip("/") + "/")


def allow_desktop_frame(request: Request, row: SandboxRow, response: Response) -> Response:
    """The sandbox page of a desktop sandbox may frame presigned sandbox URLs (its noVNC page);
    the rest of the CSP stays as it is."""
    if is_desktop(row):
        response.headers["content-security-policy"] += f"; frame-src {desktop_frame_src(request)}"
    return response
