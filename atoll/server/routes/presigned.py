"""Presigned URLs (wire-protocol §3, §5): a public URL to one port of one sandbox that works
without an API key until it expires or is deleted. The token is returned once, here; the store
keeps only its SHA-256. The URL is host-routed by the sandbox router:
``{scheme}://{token}.{presigned_domain or sandbox_domain}[:{router_port}]/``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from atoll._exceptions import NotFoundError
from atoll.router import DEFAULT_EXPIRES_IN, PresignedStore, public_url
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.response_models import answers
from atoll.server.schemas import StrictInt, iso
from atoll.server.state import services

router = APIRouter(prefix="/v1", tags=["presigned-urls"])
Org = Annotated[str, Depends(require_org)]
MAX_EXPIRES_IN = 365 * 24 * 3600


class PresignedUrlBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    expires_in: Annotated[StrictInt, Field(ge=1, le=MAX_EXPIRES_IN)] | None = None


def _store(request: Request) -> PresignedStore:
    return services(request).presigned


@router.post("/sandbox/{sandbox_id}/presigned-url", status_code=201, **answers(rm.PresignedUrl))
@router.post(
    "/sandbox/{sandbox_id}/presigned-url/",
    status_code=201,
    include_in_schema=False,
    **answers(rm.PresignedUrl),
)
async def create_presigned_url(
    sandbox_id: str, body: PresignedUrlBody, org: Org, request: Request
) -> dict[str, Any]:
    await services(request).manager.get(org, sandbox_id)  # 404 for an unknown sandbox
    row, token = await _store(request).create(
        org_id=org,
        sandbox_id=sandbox_id,
        port=body.port,
        expires_in=body.expires_in or DEFAULT_EXPIRES_IN,
    )
    settings = services(request).settings
    domain = settings.presigned_domain or settings.sandbox_host
    return {
        "id": row.id,
        "token": token,
        "url": public_url(settings.sandbox_scheme, token, domain, settings.sandbox_url_port),
        "sandbox_id": sandbox_id,
        "port": row.port,
        "expires_at": iso(row.expires_at),
        "created_at": iso(row.created_at),
    }


@router.delete("/sandbox/{sandbox_id}/presigned-url/{presigned_id}", status_code=204)
@router.delete(
    "/sandbox/{sandbox_id}/presigned-url/{presigned_id}/", status_code=204, include_in_schema=False
)
async def delete_presigned_url(sandbox_id: str, presigned_id: str, org: Org, request: Request) -> Response:
    if not await _store(request).delete(org_id=org, sandbox_id=sandbox_id, presigned_id=presigned_id):
        raise NotFoundError("presigned URL not found")
    return Response(status_code=204)
