"""Snapshot endpoints (wire-protocol §3 and §6): create from a sandbox, restore into a new one,
list, delete."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from atoll._exceptions import PermissionDeniedError
from atoll.server.auth import require_org
from atoll.server.cluster_auth import token_matches
from atoll.server.forward import SOURCE_HEADER
from atoll.server.responses import SandboxResponse, SnapshotList, SnapshotResponse
from atoll.server.schemas import (
    MAX_PAGE,
    CreateSnapshotBody,
    RestoreSnapshotBody,
    sandbox_body,
    snapshot_body,
)
from atoll.server.snapshot_transfer import SnapshotSource
from atoll.server.snapshots import SnapshotService
from atoll.server.state import services

router = APIRouter(prefix="/v1", tags=["snapshots"])
Org = Annotated[str, Depends(require_org)]
DEFAULT_TIMEOUT_S = 300


def _moved_from(request: Request) -> SnapshotSource | None:
    """Where the snapshot's files are, when the cluster sent this restore here from elsewhere."""
    address = request.headers.get(SOURCE_HEADER)
    if address is None:
        return None
    token = services(request).settings.cluster_token
    if token is None or not token_matches(request, token):
        raise PermissionDeniedError(f"{SOURCE_HEADER} is for the cluster's own processes")
    return SnapshotSource(address, token)


def service(request: Request) -> SnapshotService:
    return services(request).snapshots


@router.post(
    "/sandbox/{sandbox_id}/snapshot/create",
    status_code=201,
    response_model=SnapshotResponse,
    response_model_exclude_unset=True,
)
@router.post(
    "/sandbox/{sandbox_id}/snapshot/create/",
    status_code=201,
    include_in_schema=False,
    response_model=SnapshotResponse,
    response_model_exclude_unset=True,
)
async def create_snapshot(
    sandbox_id: str, org: Org, request: Request, body: CreateSnapshotBody | None = None
) -> dict[str, Any]:
    body = body or CreateSnapshotBody()
    row = await service(request).create(org, sandbox_id, name=body.name, kill_after=body.kill_sandbox_after)
    return snapshot_body(row)


@router.post(
    "/snapshot/restore", status_code=201, response_model=SandboxResponse, response_model_exclude_unset=True
)
@router.post(
    "/snapshot/restore/",
    status_code=201,
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def restore_snapshot(
    body: RestoreSnapshotBody, org: Org, request: Request
) -> dict[str, Any] | Response:
    forwarder = services(request).forwarder  # an API replica: restored on the snapshot's node
    if forwarder is not None and (forwarded := await forwarder.restore(org, body, request)) is not None:
        return forwarded
    return await restore_here(body, org, request)


async def restore_here(body: RestoreSnapshotBody, org: str, request: Request) -> dict[str, Any]:
    """The restore on this process's own host (its files copied here first when an API replica
    moved it off a draining node: docs/cluster.md)."""
    row = await service(request).restore(
        org,
        body.snapshot_name,
        auto_pause=body.auto_pause,
        timeout=body.timeout or DEFAULT_TIMEOUT_S,
        network_policy=body.network_policy,
        source=_moved_from(request),
    )
    return sandbox_body(row, with_policy=True)


@router.get("/snapshots", response_model=SnapshotList, response_model_exclude_unset=True)
@router.get(
    "/snapshots/", include_in_schema=False, response_model=SnapshotList, response_model_exclude_unset=True
)
async def list_snapshots(
    org: Org,
    request: Request,
    query: Annotated[str, Query(max_length=64)] = "",
    sort: Literal["created_at", "template_id"] = "created_at",
    order_by: Annotated[Literal["asc", "desc"], Query(alias="order-by")] = "desc",
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(alias="page-size", ge=1, le=100)] = 20,
) -> dict[str, Any]:
    rows, total = await service(request).repo.list(
        org, query=query, sort=sort, descending=order_by == "desc", page=page, page_size=page_size
    )
    return {"items": [snapshot_body(r) for r in rows], "total_items": total}


@router.get("/snapshot/{snapshot_id}", response_model=SnapshotResponse, response_model_exclude_unset=True)
@router.get(
    "/snapshot/{snapshot_id}/",
    include_in_schema=False,
    response_model=SnapshotResponse,
    response_model_exclude_unset=True,
)
async def get_snapshot(snapshot_id: str, org: Org, request: Request) -> dict[str, Any]:
    return snapshot_body(await service(request).get(org, snapshot_id))


@router.delete("/snapshot/{snapshot_id}", status_code=204)
@router.delete("/snapshot/{snapshot_id}/", status_code=204, include_in_schema=False)
async def delete_snapshot(snapshot_id: str, org: Org, request: Request) -> Response:
    await service(request).delete(org, snapshot_id)
    return Response(status_code=204)
