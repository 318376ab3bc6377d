"""Templates (list, rename, delete), snapshots (list, restore, delete) and the host's capacity
and pool levels, through the API routes' own handlers with the session's org."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import ValidationError

from atoll._exceptions import APIError, NotFoundError, OperationFailure, status_for
from atoll.dashboard import sessions
from atoll.dashboard.pages import checked_form, signed_in
from atoll.dashboard.web import DashboardRoute, render, validation_messages
from atoll.server.errors import http_error
from atoll.server.routes import health, snapshots, templates
from atoll.server.schemas import RestoreSnapshotBody
from atoll.server.state import services
from atoll.store.models import KEY_NAME_MAX_CHARS
from atoll.store.repo import new_api_key
from atoll.templates import oci

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


async def _templates_page(request: Request, message: str | None = None) -> Response:
    session = signed_in(request)
    listed = await templates.list_templates(session.org_id, request)
    return render(request, "templates.html", items=listed["items"], message=message)


@router.get("/ui/templates")
async def templates_page(request: Request) -> Response:
    return await _templates_page(request)


@router.post("/ui/templates/import")
async def import_template(request: Request) -> Response:
    """Import a template from an image, with progress: the API's NDJSON stream (``{"phase",
    "message"}`` lines, then ``{"template"}`` or ``{"error"}``), which the page shows as it
    comes. A refused request is one ``{"error"}`` line with the API's status in it."""
    session, fields = await checked_form(request)
    try:
        body = templates.CreateTemplateBody.model_validate(
            {"name": fields.get("name", ""), "uri": fields.get("uri", "").strip()}
        )
        settings = services(request).settings
        await oci.check_source(body.uri, settings.import_dirs, settings.template_registries)
    except ValidationError as exc:
        errors = validation_messages(exc)
        message = "; ".join(f"{e['field']}: {e['error']}" for e in errors)
        return _ndjson_error(400, message)
    except APIError as exc:
        return _ndjson_error(status_for(exc), exc.message)
    except OperationFailure as exc:  # the source refused (typed below the server)
        answer = http_error(exc)
        return _ndjson_error(status_for(answer), answer.message)
    return StreamingResponse(
        templates._progress_stream(request, session.org_id, body),
        media_type=templates.NDJSON,
        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
    )


def _ndjson_error(status: int, message: str) -> Response:
    """200 with the error in its one line, as the API's stream reports a failed import (the page
    reads the line; a 4xx would also be a console error in the browser)."""
    line = json.dumps({"error": {"status": status, "message": message}}) + "\n"
    return Response(line, media_type=templates.NDJSON, headers={"cache-control": "no-store"})


@router.post("/ui/templates/{template_id}/rename")
async def rename_template(template_id: str, request: Request) -> Response:
    session, fields = await checked_form(request)
    body = templates.RenameTemplateBody.model_validate({"name": fields.get("name", "")})
    await templates.rename_template(template_id, body, session.org_id, request)
    return await _templates_page(request, "renamed")


@router.post("/ui/templates/{template_id}/delete")
async def delete_template(template_id: str, request: Request) -> Response:
    session, _ = await checked_form(request)
    await templates.delete_template(template_id, session.org_id, request)
    return await _templates_page(request, "deleted")


async def _snapshots_page(request: Request, message: str | None = None) -> Response:
    session = signed_in(request)
    listed = await snapshots.list_snapshots(
        session.org_id, request, query="", sort="created_at", order_by="desc", page=1, page_size=100
    )
    return render(
        request, "snapshots.html", items=listed["items"], total=listed["total_items"], message=message
    )


@router.get("/ui/snapshots")
async def snapshots_page(request: Request) -> Response:
    return await _snapshots_page(request)


@router.post("/ui/snapshots/{snapshot_id}/restore")
async def restore_snapshot(snapshot_id: str, request: Request) -> Response:
    session, _ = await checked_form(request)
    row = await snapshots.service(request).get(session.org_id, snapshot_id)
    body = RestoreSnapshotBody(snapshot_name=row.name)
    restored = await snapshots.restore_here(body, session.org_id, request)
    return await _snapshots_page(request, f"restored into {restored['id']}")


@router.post("/ui/snapshots/{snapshot_id}/delete")
async def delete_snapshot(snapshot_id: str, request: Request) -> Response:
    session, _ = await checked_form(request)
    await snapshots.delete_snapshot(snapshot_id, session.org_id, request)
    return await _snapshots_page(request, "deleted")


@router.get("/ui/host")
async def host_page(request: Request) -> Response:
    signed_in(request)
    return render(request, "host.html", health=await health.health(request))


async def _keys_page(
    request: Request,
    *,
    created: str | None = None,
    message: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> Response:
    session = signed_in(request)
    keys = await services(request).repo.list_keys(session.org_id)
    items = [
        {
            "id": k.id,
            "name": k.name or "",
            "prefix": k.prefix,
            "created_at": k.created_at,
            "current": k.key_hash == session.key_hash,
        }
        for k in keys
    ]
    status_code = 400 if errors else 200
    return render(
        request,
        "keys.html",
        status_code,
        created=created,
        keys=items,
        message=message,
        errors=errors or [],
        name_max_chars=KEY_NAME_MAX_CHARS,
    )


def _key_name(fields: dict[str, str]) -> tuple[str | None, list[dict[str, str]]]:
    """The form's ``name`` (None when blank) or the error naming the field."""
    name = " ".join(fields.get("name", "").split())  # no control characters, one space each
    if len(name) > KEY_NAME_MAX_CHARS:
        return None, [{"field": "name", "error": f"at most {KEY_NAME_MAX_CHARS} characters"}]
    return name or None, []


@router.get("/ui/keys")
async def keys_page(request: Request) -> Response:
    return await _keys_page(request)


@router.post("/ui/keys")
async def create_key(request: Request) -> Response:
    """A new key of the session's org, shown once (the store keeps only its hash)."""
    session, fields = await checked_form(request)
    name, errors = _key_name(fields)
    if errors:
        return await _keys_page(request, errors=errors)
    key = new_api_key()
    await services(request).repo.add_key(session.org_id, key, name)
    return await _keys_page(request, created=key)


@router.post("/ui/keys/{key_id}/name")
async def rename_key(key_id: str, request: Request) -> Response:
    """Name one of the org's keys (a blank name removes it)."""
    session, fields = await checked_form(request)
    name, errors = _key_name(fields)
    if errors:
        return await _keys_page(request, errors=errors)
    if not await services(request).repo.rename_key(session.org_id, key_id, name):
        raise NotFoundError(f"API key {key_id} not found")
    return await _keys_page(request, message=f"renamed {key_id}")


@router.post("/ui/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke one of the org's keys: the API refuses it from the next request on, and the
    dashboard sessions signed in with it end (this one too, when it is the session's own)."""
    session, _ = await checked_form(request)
    digest = await services(request).repo.revoke_key(session.org_id, key_id)
    if digest is None:
        raise NotFoundError(f"API key {key_id} not found")
    sessions.store(request).drop_key(digest)
    if digest == session.key_hash:
        return RedirectResponse("/ui/login", status_code=303)
    return await _keys_page(request, message=f"revoked {key_id}")
