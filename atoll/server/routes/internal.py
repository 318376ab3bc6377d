"""The cluster's node-to-node calls (docs/cluster.md), answered only with the shared cluster
token (``cluster_auth``; 404 otherwise, as for any unknown path) and kept out of the OpenAPI
document: a snapshot's files streamed to the node that is to restore it, a copy dropped when
the snapshot is deleted, and a paused sandbox moved off a draining node (its files streamed
from the source to the target, which the source asks to receive it: ``sandbox_move``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from atoll._exceptions import NotFoundError
from atoll.cluster.handoff import SandboxHandoff
from atoll.server import cluster_role, sandbox_move, snapshot_transfer
from atoll.server.cluster_auth import require_cluster_token
from atoll.server.snapshots import remove_dir
from atoll.server.state import AppServices, services

router = APIRouter(prefix="/v1/internal", include_in_schema=False)
SNAPSHOT_ID = re.compile(r"snp[0-9a-f]{16}")
SANDBOX_ID = re.compile(r"sbx[0-9a-f]{16}")
MOVE_ID = r"^mv[0-9a-f]{16}$"


def _snapshot_dir(request: Request, snapshot_id: str) -> Path:
    """The snapshot's directory in this node's store, for a call carrying the cluster token."""
    app = services(request)
    require_cluster_token(request, app.settings.cluster_token)
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise NotFoundError("snapshot not found")
    return app.snapshots.root / snapshot_id


@router.get("/snapshot/{snapshot_id}/archive")
async def snapshot_archive(snapshot_id: str, request: Request) -> StreamingResponse:
    directory = _snapshot_dir(request, snapshot_id)
    if not directory.is_dir():
        raise NotFoundError("snapshot not found on this node")
    return StreamingResponse(snapshot_transfer.archive(directory), media_type="application/x-tar")


@router.delete("/snapshot/{snapshot_id}/copy", status_code=204)
async def drop_snapshot_copy(snapshot_id: str, request: Request) -> Response:
    """The snapshot was deleted: this node's copy goes too (if its record is gone)."""
    directory = _snapshot_dir(request, snapshot_id)
    if await services(request).snapshots.repo.get_any(snapshot_id) is None:  # never a live one's files
        await remove_dir(directory)
    return Response(status_code=204)


def _cluster_node(request: Request, sandbox_id: str) -> tuple[AppServices, str, str]:
    """This node's services, id and cluster token, for a call about a sandbox carrying the token."""
    app = services(request)
    require_cluster_token(request, app.settings.cluster_token)
    node_id = cluster_role.node_identity(app.settings)
    token = app.settings.cluster_token
    if not SANDBOX_ID.fullmatch(sandbox_id) or node_id is None or token is None:
        raise NotFoundError("sandbox not found")
    return app, node_id, token


@router.get("/sandbox/{sandbox_id}/archive")
async def sandbox_archive(
    sandbox_id: str, request: Request, move_id: Annotated[str, Query(pattern=MOVE_ID)]
) -> StreamingResponse:
    """A paused sandbox's disk layer and memory image, for the node it is moving to: only
    while that move of it from this node is under way."""
    app, node_id, _ = _cluster_node(request, sandbox_id)
    if await SandboxHandoff(app.repo.sessions).claimed(sandbox_id, node_id, move_id) is None:
        raise NotFoundError("no such move of this sandbox is under way here")
    directory = app.manager.host.sandbox_dir(sandbox_id)
    return StreamingResponse(
        snapshot_transfer.archive(directory, sandbox_move.archived(directory)), media_type="application/x-tar"
    )


class ReceiveBody(BaseModel):
    source_node: str = Field(min_length=1, max_length=64)
    source_address: str = Field(pattern=r"^https?://[^\s/]+$", max_length=255)
    move_id: str = Field(pattern=MOVE_ID)


@router.post("/sandbox/{sandbox_id}/receive")
async def receive_sandbox(sandbox_id: str, body: ReceiveBody, request: Request) -> dict[str, str]:
    """Take over a paused sandbox a draining node moves here (409 when this node cannot)."""
    app, node_id, token = _cluster_node(request, sandbox_id)
    move = sandbox_move.MoveRequest(body.source_node, body.source_address, body.move_id)
    ensure_template = app.template_copies.ensure if app.template_copies is not None else None
    row = await sandbox_move.receive(
        app.manager, app.snapshots, sandbox_id=sandbox_id, node_id=node_id, token=token, request=move,
        ensure_template=ensure_template,
    )  # fmt: skip
    return {"id": row.id, "node_id": node_id}
