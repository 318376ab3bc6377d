"""Sign-in, the sandboxes list (live), creating sandboxes and their lifecycle buttons.

Everything calls what the API routes call (the manager among ``AppServices``, the API's schemas for
validation), with the org of the signed-in session."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from atoll._exceptions import APIError, BadRequestError
from atoll._states import State
from atoll.dashboard import live, sessions
from atoll.dashboard.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session
from atoll.dashboard.web import DashboardRoute, message_fragment, render
from atoll.server.manager import CreateParams, SandboxManager
from atoll.server.revocable import until_revoked
from atoll.server.routes import snapshots as snapshot_routes
from atoll.server.routes import templates as template_routes
from atoll.server.schemas import CreateSandboxBody, CreateSnapshotBody, list_item
from atoll.server.state import services
from atoll.store.repo import hash_key
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
MAX_FORM_BYTES = 256 * 1024
PAGE_SIZE = 100
ACTIONS = ("pause", "resume", "stop", "start", "delete", "snapshot")
Sort = Literal["created_at", "state"]
Order = Literal["asc", "desc"]


def manager(request: Request) -> SandboxManager:
    return services(request).manager


def signed_in(request: Request) -> Session:
    session = sessions.current(request)
    request.state.dashboard_session = session
    return session


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form (last value of each field), bounded."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadRequestError(f"form too large: at most {MAX_FORM_BYTES} bytes")
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


async def checked_form(request: Request) -> tuple[Session, dict[str, str]]:
    session = signed_in(request)
    fields = (
        await form(request)
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        else {}
    )
    sessions.check_csrf(session, request, fields.get("csrf"))
    return session, fields


def _cookie(response: Response, name: str, value: str, request: Request) -> None:
    response.set_cookie(
        name, value, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )


# sign-in ----------------------------------------------------------------------------------
@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", csrf=token, error=None, session=None)
    _cookie(response, LOGIN_CSRF_COOKIE, token, request)
    return response


@router.post("/ui/login")
async def login(request: Request) -> Response:
    fields = await form(request)
    if not sessions.same(request.cookies.get(LOGIN_CSRF_COOKIE, ""), fields.get("csrf")):
        raise sessions.CsrfRefused
    raw_key = fields.get("api_key", "").strip()
    org_id = await services(request).repo.org_for_key(raw_key)
    if org_id is None:
        token = secrets.token_urlsafe(24)
        failed = render(request, "login.html", 401, csrf=token, error="invalid API key", session=None)
        _cookie(failed, LOGIN_CSRF_COOKIE, token, request)
        return failed
    session = sessions.store(request).create(str(org_id), hash_key(raw_key))
    response: Response = RedirectResponse("/", status_code=303)
    _cookie(response, SESSION_COOKIE, session.id, request)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    session, _ = await checked_form(request)
    sessions.store(request).drop(session.id)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# the list -----------------------------------------------------------------------------------
async def _rows(request: Request, org: str, state: State | None, sort: Sort, order: Order) -> dict[str, Any]:
    rows, total = await manager(request).repo.list_sandboxes(
        org,
        state=state.value if state else None,
        sort=sort,
        descending=order == "desc",
        page=1,
        page_size=PAGE_SIZE,
    )
    items = [
        {**list_item(r), "template_name": r.template_name, "vcpu": r.vcpu, "memory": r.memory} for r in rows
    ]
    return {"items": items, "total": total}


StateQ = Annotated[State | None, Query()]


@router.get("/")
async def index(
    request: Request, state: StateQ = None, sort: Sort = "created_at", order: Order = "desc"
) -> Response:
    session = signed_in(request)
    listing = await _rows(request, session.org_id, state, sort, order)
    listed = await template_routes.list_templates(session.org_id, request)
    templates = [t["name"] for t in listed["items"] if t["state"] == "ready"]
    return render(
        request,
        "sandboxes.html",
        **listing,
        state=state.value if state else "",
        sort=sort,
        order=order,
        states=[s.value for s in State if s is not State.DELETED],
        templates=templates,
        default_template=DEFAULT_TEMPLATE_NAME,
        query=request.url.query,
    )


@router.get("/ui/sandboxes/rows")
async def rows(
    request: Request, state: StateQ = None, sort: Sort = "created_at", order: Order = "desc"
) -> Response:
    session = signed_in(request)
    return render(request, "_rows.html", **await _rows(request, session.org_id, state, sort, order))


@router.get("/ui/events")
async def events(
    request: Request, state: StateQ = None, sort: Sort = "created_at", order: Order = "desc"
) -> Response:
    session = signed_in(request)
    hub = live.hub_for(request.app.state, services(request).repo)
    if hub.full:
        raise APIError("too many open dashboards", status_code=503)

    async def rendered() -> str:
        listing = await _rows(request, session.org_id, state, sort, order)
        return bytes(render(request, "_rows.html", **listing).body).decode()

    return StreamingResponse(
        until_revoked(request, hub.stream(rendered), key_hash=session.key_hash),  # ends with the key
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


# create and act -----------------------------------------------------------------------------
def _int_or_raw(value: str) -> int | str:
    try:
        return int(value.strip())
    except ValueError:
        return value


def _env_vars(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise BadRequestError(f"env_vars: line {number} is not NAME=value")
        env[name.strip()] = value
    return env


def create_body(fields: dict[str, str]) -> CreateSandboxBody:
    data: dict[str, Any] = {
        "template_name": fields.get("template_name") or DEFAULT_TEMPLATE_NAME,
        "vcpu": _int_or_raw(fields.get("vcpu", "1")),
        "memory": _int_or_raw(fields.get("memory", "1024")),
        "timeout": _int_or_raw(fields.get("timeout", "300")),
        "auto_pause": fields.get("auto_pause") == "on",
    }
    if env_text := fields.get("env_vars", "").strip():
        data["env_vars"] = _env_vars(env_text)
    if mode := fields.get("network_mode", ""):
        policy: dict[str, Any] = {"mode": mode}
        domains = [
            d.strip() for d in fields.get("allow_domains", "").replace(",", "\n").splitlines() if d.strip()
        ]
        if mode == "custom":
            policy["allow_domains"] = domains
        data["network_policy"] = policy
    return CreateSandboxBody.model_validate(data)  # the API's own validation and messages


@router.post("/ui/sandboxes")
async def create(request: Request) -> Response:
    session, fields = await checked_form(request)
    body = create_body(fields)
    row = await manager(request).create(
        session.org_id,
        CreateParams(
            template_name=body.template_name,
            vcpu=body.vcpu,
            memory=body.memory,
            timeout=body.timeout,
            auto_pause=body.auto_pause,
            env_vars=dict(body.env_vars or {}),
            network_policy=body.network_policy,
        ),
    )
    return render(request, "_message.html", message=f"created {row.id}", errors=[], kind="ok", link=row.id)


@router.post("/ui/sandboxes/{sandbox_id}/actions/{action}")
async def act(sandbox_id: str, action: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    org, sandboxes = session.org_id, manager(request)
    if action not in ACTIONS:
        return message_fragment(request, f"unknown action {action!r}")
    if action == "pause":
        await sandboxes.pause(org, sandbox_id)
    elif action == "resume":
        await sandboxes.ensure_running(await sandboxes.get(org, sandbox_id))
    elif action == "stop":
        await sandboxes.stop(org, sandbox_id)
    elif action == "start":
        await sandboxes.start(org, sandbox_id)
    elif action == "delete":
        await sandboxes.delete(org, sandbox_id)
        if fields.get("back"):  # from the sandbox's own page, which is gone now
            return Response(status_code=204, headers={"hx-redirect": "/"})
    else:
        snapshot = await snapshot_routes.create_snapshot(sandbox_id, org, request, CreateSnapshotBody())
        return render(
            request, "_message.html", message=f"snapshot {snapshot['name']} created", errors=[], kind="ok"
        )
    return render(request, "_message.html", message=f"{action}: done", errors=[], kind="ok")
