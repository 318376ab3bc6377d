"""The cluster's node-to-node calls (docs/cluster.md), answered only with the shared cluster
token (``cluster_auth``; 404 otherwise, as for any unknown path) and kept out of the OpenAPI
document: a snapshot's files streamed to the node that is to restore it, and a copy dropped
when the snapshot is deleted."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from atoll._exceptions import NotFoundError
from atoll.server import snapshot_transfer
from atoll.server.cluster_auth import require_cluster_token
from atoll.server.snapshots import remove_dir
from atoll.server.state import services

router = APIRouter(prefix="/v1/internal", include_in_schema=False)
SNAPSHOT_ID = re.compile(r"snp[0-9a-f]{16}")


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
