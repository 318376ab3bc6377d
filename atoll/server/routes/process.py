"""``POST /v1/sandbox/{id}/process/execute`` (wire-protocol §7): ``/bin/sh -c command`` inside
the sandbox, resuming it first when paused."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from atoll.server.auth import require_org
from atoll.server.schemas import ExecuteBody, ExecuteResponse

router = APIRouter(prefix="/v1", tags=["process"])
DEFAULT_TIMEOUT_S = 30


@router.post("/sandbox/{sandbox_id}/process/execute")
@router.post("/sandbox/{sandbox_id}/process/execute/", include_in_schema=False)
async def execute(
    sandbox_id: str, body: ExecuteBody, org: Annotated[str, Depends(require_org)], request: Request
) -> ExecuteResponse:
    result = await request.app.state.manager.execute(
        org,
        sandbox_id,
        command=body.command,
        cwd=body.cwd,
        envs=dict(body.envs or {}),
        timeout=body.timeout or DEFAULT_TIMEOUT_S,
    )
    return ExecuteResponse(
        exit_code=result.exit_code,
        stdout=result.stdout.decode(errors="replace"),
        stderr=result.stderr.decode(errors="replace"),
    )
