"""Commands inside a sandbox: ``process/execute`` (wire-protocol §7, ``/bin/sh -c`` to its end,
resuming a paused sandbox first) and Atoll's live processes (``spec/processes.md``: background
processes, their event streams, stdin and signals; see ``atoll.server.processes``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from atoll.server import execution
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.process_frames import FRAMES_MEDIA_TYPE, wants_frames
from atoll.server.processes import ProcessService
from atoll.server.response_models import answers
from atoll.server.revocable import until_revoked
from atoll.server.schemas import Command, EnvVars, ExecuteBody, ExecuteResponse, StrictInt, Text
from atoll.server.state import services

router = APIRouter(prefix="/v1", tags=["process"])
DEFAULT_TIMEOUT_S = 30
STDIN_MAX_CHARS = 1 << 20
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events, or binary frames with Accept: " + FRAMES_MEDIA_TYPE,
        "content": {
            "text/event-stream": {"schema": {"type": "string"}},
            FRAMES_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
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
    return services(request).processes


@router.post("/sandbox/{sandbox_id}/process/execute")
@router.post("/sandbox/{sandbox_id}/process/execute/", include_in_schema=False)
async def execute(sandbox_id: str, body: ExecuteBody, org: Org, request: Request) -> ExecuteResponse:
    result = await execution.execute(
        services(request).manager,
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


@router.post(
    "/sandbox/{sandbox_id}/process/execute/stream", response_class=StreamingResponse, responses=_STREAMED
)
async def execute_stream(sandbox_id: str, body: ExecuteBody, org: Org, request: Request) -> Response:
    """``process/execute`` as an event stream: output as produced, ``exit`` last (framed binary
    with ``Accept: application/octet-stream``, ``process_frames``)."""
    frames = wants_frames(request.headers.get("accept"))
    stream = await service(request).execute_stream(
        org,
        sandbox_id,
        command=body.command,
        cwd=body.cwd,
        envs=dict(body.envs or {}),
        timeout_s=body.timeout or DEFAULT_TIMEOUT_S,
        frames=frames,
    )
    return _streamed(request, stream, frames=frames)


def _streamed(request: Request, stream: AsyncIterator[bytes], *, frames: bool) -> Response:
    """The stream as the response's body, ended when the caller's key is revoked."""
    media_type = FRAMES_MEDIA_TYPE if frames else "text/event-stream"
    return StreamingResponse(until_revoked(request, stream), media_type=media_type, headers=SSE_HEADERS)


@router.post("/sandbox/{sandbox_id}/process/start", status_code=201, **answers(rm.ProcessInfo))
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


@router.get("/sandbox/{sandbox_id}/process", **answers(rm.ProcessList))
async def list_processes(sandbox_id: str, org: Org, request: Request) -> dict[str, object]:
    return {"items": await service(request).list(org, sandbox_id)}


@router.get("/sandbox/{sandbox_id}/process/{pid}", **answers(rm.ProcessInfo))
async def get_process(sandbox_id: str, pid: Pid, org: Org, request: Request) -> dict[str, object]:
    return await service(request).get(org, sandbox_id, pid)


@router.get(
    "/sandbox/{sandbox_id}/process/{pid}/events", response_class=StreamingResponse, responses=_STREAMED
)
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
    frames = wants_frames(request.headers.get("accept"))
    stream = await service(request).open_events(
        org, sandbox_id, pid, since, binary=binary, follow=follow, frames=frames
    )
    return _streamed(request, stream, frames=frames)


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
