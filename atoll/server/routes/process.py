"""Commands inside a sandbox: ``process/execute`` (wire-protocol §7, ``/bin/sh -c`` to its end,
resuming a paused sandbox first) and Atoll's live processes (``spec/processes.md``: background
processes, their event streams, stdin and signals; see ``atoll.server.processes``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from atoll.server.auth import require_org
from atoll.server.processes import ProcessService
from atoll.server.schemas import Command, EnvVars, ExecuteBody, ExecuteResponse, StrictInt, Text

router = APIRouter(prefix="/v1", tags=["process"])
DEFAULT_TIMEOUT_S = 30
STDIN_MAX_CHARS = 1 << 20
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
Org = Annotated[str, Depends(require_org)]
Pid = Annotated[int, Field(ge=1, le=2**31 - 1)]


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Command
    cwd: Annotated[Text, Field(min_length=1, max_length=4096, pattern=r"^/")] | None = None
    envs: EnvVars | None = None
    timeout: Annotated[StrictInt, Field(ge=0, le=7 * 86400)] = 0
    stdin: bool = False
    tag: Annotated[Text, Field(max_length=256)] | None = None


class StdinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: Annotated[str, Field(max_length=STDIN_MAX_CHARS)] = ""
    eof: bool = False


class SignalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: Annotated[str, Field(max_length=16)]


def service(request: Request) -> ProcessService:
    state = request.app.state
    found: ProcessService | None = getattr(state, "processes", None)
    if found is None:
        found = state.processes = ProcessService(state.manager)
    return found


@router.post("/sandbox/{sandbox_id}/process/execute")
@router.post("/sandbox/{sandbox_id}/process/execute/", include_in_schema=False)
async def execute(sandbox_id: str, body: ExecuteBody, org: Org, request: Request) -> ExecuteResponse:
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


@router.post("/sandbox/{sandbox_id}/process/execute/stream")
async def execute_stream(sandbox_id: str, body: ExecuteBody, org: Org, request: Request) -> Response:
    """``process/execute`` as an event stream: output as produced, ``exit`` last."""
    stream = await service(request).execute_stream(
        org,
        sandbox_id,
        command=body.command,
        cwd=body.cwd,
        envs=dict(body.envs or {}),
        timeout_s=body.timeout or DEFAULT_TIMEOUT_S,
    )
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/sandbox/{sandbox_id}/process/start", status_code=201)
async def start(sandbox_id: str, body: StartBody, org: Org, request: Request) -> dict[str, object]:
    return await service(request).start(
        org,
        sandbox_id,
        command=body.command,
        cwd=body.cwd,
        envs=dict(body.envs or {}),
        timeout_s=body.timeout,
        stdin=body.stdin,
        tag=body.tag,
    )


@router.get("/sandbox/{sandbox_id}/process")
async def list_processes(sandbox_id: str, org: Org, request: Request) -> dict[str, object]:
    return {"items": await service(request).list(org, sandbox_id)}


@router.get("/sandbox/{sandbox_id}/process/{pid}")
async def get_process(sandbox_id: str, pid: Pid, org: Org, request: Request) -> dict[str, object]:
    return await service(request).get(org, sandbox_id, pid)


@router.get("/sandbox/{sandbox_id}/process/{pid}/events")
async def events(
    sandbox_id: str,
    pid: Pid,
    org: Org,
    request: Request,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
    binary: bool = False,
    follow: bool = True,
) -> Response:
    """Events after ``since``, live until the process ends (``follow=false``: what is kept)."""
    stream = await service(request).open_events(org, sandbox_id, pid, since, binary=binary, follow=follow)
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/sandbox/{sandbox_id}/process/{pid}/stdin", status_code=204)
async def stdin(sandbox_id: str, pid: Pid, body: StdinBody, org: Org, request: Request) -> Response:
    data = body.data.encode("utf-8", "surrogateescape")
    await service(request).send_stdin(org, sandbox_id, pid, data, eof=body.eof)
    return Response(status_code=204)


@router.post("/sandbox/{sandbox_id}/process/{pid}/signal", status_code=204)
async def send_signal(sandbox_id: str, pid: Pid, body: SignalBody, org: Org, request: Request) -> Response:
    await service(request).signal(org, sandbox_id, pid, body.signal)
    return Response(status_code=204)


@router.delete("/sandbox/{sandbox_id}/process/{pid}", status_code=204)
async def kill(sandbox_id: str, pid: Pid, org: Org, request: Request) -> Response:
    await service(request).signal(org, sandbox_id, pid, "SIGKILL")
    return Response(status_code=204)
