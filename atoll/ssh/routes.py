"""``/v1/sandbox/{id}/ssh/...`` (agent-services §4): SSH access credentials for the gateway."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from atoll._exceptions import APIError, ConflictError, NotFoundError
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.response_models import answers
from atoll.server.schemas import Text, iso
from atoll.server.state import services
from atoll.ssh.access import AccessStore, matches
from atoll.store.models import SshAccessRow

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}/ssh", tags=["ssh"])
Org = Annotated[str, Depends(require_org)]
MAX_ACCESSES_PER_SANDBOX = 32


class ValidateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: Annotated[Text, Field(min_length=1, max_length=1024)]


def _store(request: Request) -> AccessStore:
    store = services(request).ssh_access
    if store is None:
        raise APIError("ssh is not available on this server", status_code=501)
    return store


def ssh_command(request: Request, access_id: str) -> str:
    settings = services(request).settings
    host = settings.ssh_public_host or request.url.hostname or "localhost"
    return f"ssh -p {settings.ssh_port} {access_id}@{host}"


def _body(request: Request, row: SshAccessRow, password: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "sandbox_id": row.sandbox_id,
        "password": password,
        "expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "ssh_command": ssh_command(request, row.id),
    }


async def _access(request: Request, org: str, sandbox_id: str, ssh_id: str) -> SshAccessRow:
    await services(request).manager.get(org, sandbox_id)  # 404 for a sandbox that is not the org's
    row = await _store(request).find(org, sandbox_id, ssh_id)
    if row is None:
        raise NotFoundError("ssh access not found")
    return row


@router.post("/access", status_code=201, **answers(rm.SshAccess))
async def create_access(sandbox_id: str, org: Org, request: Request) -> dict[str, Any]:
    store = _store(request)
    row = await services(request).manager.get(org, sandbox_id)
    if await store.count_for_sandbox(row.id) >= MAX_ACCESSES_PER_SANDBOX:
        raise ConflictError(f"at most {MAX_ACCESSES_PER_SANDBOX} ssh accesses per sandbox: delete one")
    access, password = await store.create(org, row.id)
    return _body(request, access, password)


@router.delete("/{ssh_id}", status_code=204)
async def delete_access(sandbox_id: str, ssh_id: str, org: Org, request: Request) -> Response:
    row = await _access(request, org, sandbox_id, ssh_id)
    await _store(request).delete(row.id)
    return Response(status_code=204)


@router.post("/{ssh_id}/validate", **answers(rm.SshValidation))
async def validate_access(
    sandbox_id: str, ssh_id: str, body: ValidateBody, org: Org, request: Request
) -> dict[str, Any]:
    row = await _access(request, org, sandbox_id, ssh_id)
    return {"valid": matches(row, body.password), "sandbox_id": row.sandbox_id}


@router.post("/{ssh_id}/regen", **answers(rm.SshAccess))
async def regen_access(sandbox_id: str, ssh_id: str, org: Org, request: Request) -> dict[str, Any]:
    row = await _access(request, org, sandbox_id, ssh_id)
    access, password = await _store(request).regen(row)
    return _body(request, access, password)
