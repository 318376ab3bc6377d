"""The cluster's node-to-node calls about imported templates (docs/cluster.md, Templates):
answered only with the shared cluster token (404 otherwise, as for any unknown path), kept out
of the OpenAPI document, and only by a node (``AppServices.template_copies``): a template's size
and its files as a tar stream for a node that is to copy them, and a copy dropped once the
template was deleted."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from atoll._exceptions import NotFoundError
from atoll.server import snapshot_quota, snapshot_transfer
from atoll.server.cluster_auth import require_cluster_token
from atoll.server.state import services
from atoll.server.template_copies import TemplateCopies

router = APIRouter(prefix="/v1/internal", include_in_schema=False)


def _copies(request: Request) -> TemplateCopies:
    app = services(request)
    require_cluster_token(request, app.settings.cluster_token)
    if app.template_copies is None:
        raise NotFoundError("not found")
    return app.template_copies


@router.get("/template/{template_id}")
async def template_size(template_id: str, request: Request) -> dict[str, int]:
    """What the template's files take on disk: the copying node admits that much first."""
    directory = await _copies(request).served(template_id)
    return {"bytes": (await snapshot_quota.measure(directory)).size_bytes}


@router.get("/template/{template_id}/archive")
async def template_archive(template_id: str, request: Request) -> StreamingResponse:
    directory = await _copies(request).served(template_id)
    return StreamingResponse(snapshot_transfer.archive(directory), media_type="application/x-tar")


@router.delete("/template/{template_id}/copy", status_code=204)
async def drop_template_copy(template_id: str, request: Request) -> Response:
    await _copies(request).drop(template_id)
    return Response(status_code=204)
