"""Sandbox lifecycle endpoints (wire-protocol §3). Both spellings of every path are served,
with and without the trailing slash, because the leap0 SDK follows no redirects."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.requests import ClientDisconnect

from atoll._states import State
from atoll.server.auth import require_org
from atoll.server.manager import CreateParams, SandboxManager
from atoll.server.responses import SandboxList, SandboxResponse
from atoll.server.schemas import MAX_PAGE, CreateSandboxBody, list_item, sandbox_body
from atoll.server.state import services

log = logging.getLogger("atoll.server")
router = APIRouter(prefix="/v1", tags=["sandboxes"])
Org = Annotated[str, Depends(require_org)]


def manager(request: Request) -> SandboxManager:
    return services(request).manager


@router.post("/sandbox", status_code=201, response_model=SandboxResponse, response_model_exclude_unset=True)
@router.post(
    "/sandbox/",
    status_code=201,
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def create_sandbox(body: CreateSandboxBody, org: Org, request: Request) -> dict[str, Any] | Response:
    if (forwarder := services(request).forwarder) is not None:  # an API replica: placed on a node
        return await forwarder.create(org, body, request)
    row = await manager(request).create(
        org,
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
    if await request.is_disconnected():
        # nobody will learn the sandbox's id (a client that gave up, a cluster's API replica
        # that died forwarding it): undone, rather than left running until its timeout
        log.warning("deleted sandbox %s: its create's client went away before the answer", row.id)
        await manager(request).delete(org, row.id)
        raise ClientDisconnect
    return sandbox_body(row, with_policy=True)


@router.get("/sandboxes", response_model=SandboxList, response_model_exclude_unset=True)
@router.get(
    "/sandboxes/", include_in_schema=False, response_model=SandboxList, response_model_exclude_unset=True
)
async def list_sandboxes(
    org: Org,
    request: Request,
    state: State | None = None,
    sort: Literal["created_at", "state"] = "created_at",
    order_by: Annotated[Literal["asc", "desc"], Query(alias="order-by")] = "desc",
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(alias="page-size", ge=1, le=100)] = 20,
) -> dict[str, Any]:
    rows, total = await manager(request).repo.list_sandboxes(
        org,
        state=state.value if state else None,
        sort=sort,
        descending=order_by == "desc",
        page=page,
        page_size=page_size,
    )
    return {"items": [list_item(r) for r in rows], "total_items": total}


@router.get("/sandbox/{sandbox_id}/", response_model=SandboxResponse, response_model_exclude_unset=True)
@router.get(
    "/sandbox/{sandbox_id}",
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def get_sandbox(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    return sandbox_body(await manager(request).get(org, sandbox_id), with_policy=False)


@router.delete("/sandbox/{sandbox_id}/", status_code=204)
@router.delete("/sandbox/{sandbox_id}", status_code=204, include_in_schema=False)
async def delete_sandbox(sandbox_id: str, org: Org, request: Request) -> Response:
    await manager(request).delete(org, sandbox_id)
    return Response(status_code=204)


@router.post(
    "/sandbox/{sandbox_id}/pause",
    status_code=201,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
@router.post(
    "/sandbox/{sandbox_id}/pause/",
    status_code=201,
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def pause_sandbox(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    return sandbox_body(await manager(request).pause(org, sandbox_id), with_policy=True)


@router.post("/sandbox/{sandbox_id}/stop", response_model=SandboxResponse, response_model_exclude_unset=True)
@router.post(
    "/sandbox/{sandbox_id}/stop/",
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def stop_sandbox(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    return sandbox_body(await manager(request).stop(org, sandbox_id), with_policy=True)


@router.post("/sandbox/{sandbox_id}/start", response_model=SandboxResponse, response_model_exclude_unset=True)
@router.post(
    "/sandbox/{sandbox_id}/start/",
    include_in_schema=False,
    response_model=SandboxResponse,
    response_model_exclude_unset=True,
)
async def start_sandbox(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    return sandbox_body(await manager(request).start(org, sandbox_id), with_policy=True)
