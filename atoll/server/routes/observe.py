"""Watching and measuring a sandbox (``spec/processes.md``): ``filesystem/watch`` (an event
stream of changes, ``atoll.server.watch``) and ``metrics`` (sampled resource use,
``atoll.server.metrics``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from atoll._exceptions import BadRequestError
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.response_models import answers
from atoll.server.revocable import until_revoked
from atoll.server.state import services
from atoll.server.watch import WatchService

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}", tags=["observe"])
Org = Annotated[str, Depends(require_org)]
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def watches(request: Request) -> WatchService:
    return services(request).watches


@router.get(
    "/filesystem/watch",
    response_class=StreamingResponse,
    responses=rm.streamed("text/event-stream", "Server-sent events: one per change"),
)
async def watch(
    sandbox_id: str,
    org: Org,
    request: Request,
    path: Annotated[str, Query(min_length=1, max_length=4096)],
    recursive: bool = False,
) -> Response:
    """Changes below ``path`` (a directory), as they happen, until the client leaves."""
    stream = await watches(request).open(org, sandbox_id, path, recursive=recursive)
    body = until_revoked(request, stream)  # ends when the caller's key is revoked
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/metrics", **answers(rm.MetricsSamples))
@router.get("/metrics/", include_in_schema=False, **answers(rm.MetricsSamples))
async def metrics(
    sandbox_id: str,
    org: Org,
    request: Request,
    since: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, object]:
    """The samples kept for the sandbox (every ``metrics_interval_s`` while it runs)."""
    row = await services(request).manager.get(org, sandbox_id)
    cutoff = None
    if since is not None:
        try:
            cutoff = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            cutoff = None
        if cutoff is None or cutoff.tzinfo is None:
            raise BadRequestError(
                "invalid since", errors=[{"field": "since", "error": "an ISO 8601 time with a zone"}]
            )
        cutoff = cutoff.astimezone(dt.UTC)
    service = services(request).metrics
    return {"items": service.samples(row.id, cutoff)}
