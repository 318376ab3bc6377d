"""``POST /v1/sandbox/{id}/git/<op>`` (agent-services §2): git run inside the sandbox, in its
working directory, as its user; ``{output, exit_code}`` as git printed them (``commit``:
``{sha, result}``). The scripts come from ``atoll.server.git``.

An op without a credential runs like ``process/execute``. One with a credential runs as a live
process with a stdin pipe: the server writes the credential to the pipe and closes it, and the
script's one-shot helper hands it to git (never in arguments, environment or files)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from atoll.server import execution, git
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.response_models import answers
from atoll.server.routes.process import service
from atoll.server.state import services

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}/git", tags=["git"])
Org = Annotated[str, Depends(require_org)]
LOCAL_TIMEOUT_S = 120
NETWORK_TIMEOUT_S = 900
B = TypeVar("B", bound=BaseModel)


async def run(request: Request, org: str, sandbox_id: str, plan: git.Plan) -> dict[str, Any]:
    timeout_s = NETWORK_TIMEOUT_S if plan.network else LOCAL_TIMEOUT_S
    if plan.credential is None:
        result = await execution.execute(
            services(request).manager,
            org,
            sandbox_id,
            command=plan.script(),
            cwd=None,
            envs=plan.env,
            timeout=timeout_s,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        return {"output": output, "exit_code": result.exit_code}
    return await _run_with_credential(request, org, sandbox_id, plan, plan.credential, timeout_s)


async def _run_with_credential(
    request: Request, org: str, sandbox_id: str, plan: git.Plan, secret: str, timeout_s: int
) -> dict[str, Any]:
    processes = service(request)
    limit_bytes = services(request).settings.exec_max_output_bytes
    started = await processes.start(
        org, sandbox_id, command=plan.script(), cwd=None, envs=plan.env, timeout_s=timeout_s,
        stdin=True, tag=None, foreground=True,
    )  # fmt: skip
    pid = int(started["pid"])
    try:
        body = await processes.open_events(org, sandbox_id, pid, 0, binary=True)
        await processes.send_stdin(org, sandbox_id, pid, secret.encode(), eof=True)
    except BaseException:
        await processes.signal(org, sandbox_id, pid, "SIGKILL")
        raise
    output = bytearray()
    exit_code = -1
    ended = False
    try:
        async for frame in body:
            if not frame.startswith(b"data: "):
                continue  # keepalive
            event = json.loads(frame[len(b"data: ") :])
            if event["type"] in ("stdout", "stderr") and len(output) < limit_bytes:
                output += base64.b64decode(event["data"])[: limit_bytes - len(output)]
            elif event["type"] == "exit":
                exit_code = int(event["exit_code"])
                ended = True
    finally:
        if not ended:  # the client left, or the stream broke: the command goes too
            try:
                await processes.signal(org, sandbox_id, pid, "SIGKILL")
            except Exception:  # it may have ended meanwhile
                pass
    return {"output": output.decode(errors="replace"), "exit_code": exit_code}


def _op(name: str, body_type: type[B], build: Callable[[B], git.Plan]) -> None:
    async def endpoint(sandbox_id: str, org: Org, request: Request, body: Any) -> dict[str, Any]:
        return await run(request, org, sandbox_id, build(body))

    # real objects, not the strings postponed annotations leave: FastAPI reads the body's model here
    endpoint.__annotations__ = {
        "sandbox_id": str, "org": Org, "request": Request, "body": body_type, "return": dict[str, Any]
    }  # fmt: skip
    endpoint.__name__ = f"git_{name.replace('-', '_')}"
    router.add_api_route(f"/{name}", endpoint, methods=["POST"], **answers(rm.GitResult))


_OPS: list[tuple[str, type[BaseModel], Callable[[Any], git.Plan]]] = [
    ("clone", git.CloneBody, git.clone),
    ("status", git.PathBody, git.status),
    ("reset", git.PathBody, git.reset),
    ("branches", git.BranchesBody, git.branches),
    ("diff-unstaged", git.DiffWorkBody, git.diff_unstaged),
    ("diff-staged", git.DiffWorkBody, git.diff_staged),
    ("diff", git.DiffBody, git.diff),
    ("log", git.LogBody, git.log),
    ("show", git.ShowBody, git.show),
    ("create-branch", git.CreateBranchBody, git.create_branch),
    ("checkout-branch", git.CheckoutBranchBody, git.checkout_branch),
    ("delete-branch", git.DeleteBranchBody, git.delete_branch),
    ("add", git.AddBody, git.add),
    ("push", git.RemoteBody, git.push),
    ("pull", git.RemoteBody, git.pull),
]
for _name, _body, _build in _OPS:
    _op(_name, _body, _build)


@router.post("/commit", **answers(rm.GitCommit))
async def commit(sandbox_id: str, body: git.CommitBody, org: Org, request: Request) -> dict[str, Any]:
    result = await run(request, org, sandbox_id, git.commit(body))
    sha = None
    if result["exit_code"] == 0:
        found = await run(request, org, sandbox_id, git.commit_sha(body.path))
        sha = found["output"].strip() if found["exit_code"] == 0 else None
    return {"sha": sha, "result": result}
