"""Templates (list, rename, delete), snapshots (list, restore, delete) and the host's capacity
and pool levels, through the API routes' own handlers with the session's org."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from atoll.dashboard.pages import checked_form, signed_in
from atoll.dashboard.web import DashboardRoute, render
from atoll.server.routes import health, snapshots, templates
from atoll.server.schemas import RestoreSnapshotBody
from atoll.store.repo import new_api_key

router = APIRouter(route_class=DashboardRoute, include_in_schema=False)


async def _templates_page(request: Request, message: str | None = None) -> Response:
    session = signed_in(request)
    listed = await templates.list_templates(session.org_id, request)
    return render(request, "templates.html", items=listed["items"], message=message)


@router.get("/ui/templates")
async def templates_page(request: Request) -> Response:
    return await _templates_page(request)


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
    restored = await snapshots.restore_snapshot(body, session.org_id, request)
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


@router.get("/ui/keys")
async def keys_page(request: Request) -> Response:
    signed_in(request)
    return render(request, "keys.html", created=None)


@router.post("/ui/keys")
async def create_key(request: Request) -> Response:
    """A new key of the session's org, shown once (the store keeps only its hash). The store
    has no way to list or revoke keys yet: ``atoll keys`` on the host is where that would go."""
    session, _ = await checked_form(request)
    key = new_api_key()
    await request.app.state.repo.add_key(session.org_id, key)
    return render(request, "keys.html", created=key)
