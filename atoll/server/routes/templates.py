"""Template endpoints (wire-protocol §6): import from an OCI image, list, rename, delete.

``POST /v1/template`` answers 201 with the template once it is imported. A client that sends
``Accept: application/x-ndjson`` instead gets 201 at once and a stream of JSON lines:
``{"phase", "message"}`` progress events, then ``{"template": {...}}`` or ``{"error": {"status",
"message"}}`` (what the CLI shows as pull/unpack progress). Names beginning with ``system/``
belong to the host's built-in templates, which cannot be renamed or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from atoll._exceptions import (
    APIError,
    BadRequestError,
    ConflictError,
    OperationFailure,
    ServerError,
    status_for,
)
from atoll.runtime.commands import CommandFailed, CommandTimeout
from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.errors import http_error
from atoll.server.response_models import answers
from atoll.server.schemas import iso
from atoll.server.state import services
from atoll.store.models import TemplateRow
from atoll.templates import oci
from atoll.templates.catalog import TemplateCatalog
from atoll.templates.registry import SYSTEM_ID_PREFIX, SYSTEM_PREFIX, Template

router = APIRouter(prefix="/v1", tags=["templates"])
Org = Annotated[str, Depends(require_org)]
NDJSON = "application/x-ndjson"
# with Accept: application/x-ndjson, progress lines then the template (or the error) last
_NDJSON: dict[int | str, dict[str, Any]] = {
    201: {"content": {NDJSON: {"schema": {"type": "string", "description": "one JSON object a line"}}}}
}
IMPORT_SLOTS = 2  # concurrent pulls per server


def _check_name(value: str) -> str:
    name = value.strip()
    if not name or len(name) > 64:
        raise ValueError("must be 1 to 64 characters")
    if any(c.isspace() for c in name):
        raise ValueError("must not contain whitespace")
    if name.startswith(SYSTEM_PREFIX):
        raise ValueError("names starting with 'system/' are reserved")
    return name


class CreateTemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    uri: Annotated[str, Field(min_length=1, max_length=500)]
    credentials: dict[str, Any] | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("credentials")
    @classmethod
    def _basic_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        kind = value.get("type")
        if kind != "basic":
            raise ValueError(f"credentials of type {kind!r} are not supported by this server (use 'basic')")
        username, password = value.get("username"), value.get("password")
        if not isinstance(username, str) or not username or not isinstance(password, str):
            raise ValueError("basic credentials need a username and a password")
        if set(value) - {"type", "username", "password"}:
            raise ValueError("basic credentials take only type, username and password")
        return value


class RenameTemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))


def catalog(request: Request) -> TemplateCatalog:
    return services(request).templates


def template_body(row: TemplateRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "digest": row.digest,
        "image_config": row.image_config,
        "is_system": False,
        "created_at": iso(row.created_at),
        "uri": row.uri,
        "state": row.state,
    }


def system_body(template: Template) -> dict[str, Any]:
    return {
        "id": template.id,
        "name": template.name,
        "digest": "",
        "image_config": None,
        "is_system": True,
        "created_at": template.created_at,
        "uri": "",
        "state": "ready",
    }


def _system(request: Request) -> list[Template]:
    registry = catalog(request).registry
    return [t for name in registry.names() if (t := registry.get(name)) is not None]


def _refuse_system(request: Request, template_id: str, what: str) -> None:
    # by id alone too: an API replica has none of the system templates' files (docs/cluster.md)
    if template_id.startswith(SYSTEM_ID_PREFIX) or any(t.id == template_id for t in _system(request)):
        raise ConflictError(f"system templates cannot be {what}")


async def _import(
    request: Request, org: str, body: CreateTemplateBody, on_progress: oci.Progress | None = None
) -> dict[str, Any]:
    templates = catalog(request)
    settings = services(request).settings
    row = await templates.reserve(org, body.name, body.uri)
    credentials = (body.credentials["username"], body.credentials["password"]) if body.credentials else None
    try:
        assert templates.registry.user_root is not None
        async with _slots(request):
            digest, image = await oci.import_image(
                uri=body.uri,
                credentials=credentials,
                template_id=row.id,
                name=body.name,
                dest=templates.registry.user_root / row.id,
                import_dirs=settings.import_dirs,
                timeout=settings.template_import_timeout_s,
                registries=settings.template_registries,
                on_progress=on_progress,
            )
        row = await templates.finish(row.id, digest=digest, image_config=image.to_wire())
    except BaseException as exc:
        await asyncio.shield(templates.discard(row.id))
        if isinstance(exc, CommandTimeout):
            raise ServerError(f"importing {body.uri} timed out", status_code=504) from None
        if isinstance(exc, CommandFailed):
            raise BadRequestError(f"could not import {body.uri}: {_reason(exc.stderr)}") from None
        raise
    return template_body(row)


def _reason(stderr: str) -> str:
    """The gist of a skopeo/umoci failure: its last line, without the logger's decoration."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "failed"
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', last)
    return (found.group(1).replace('\\"', '"') if found else last)[-1000:]


def _slots(request: Request) -> asyncio.Semaphore:
    return services(request).template_imports


async def _progress_stream(request: Request, org: str, body: CreateTemplateBody) -> AsyncIterator[bytes]:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(
        _import(
            request, org, body, lambda phase, message: events.put_nowait({"phase": phase, "message": message})
        )
    )
    try:
        while not task.done() or not events.empty():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield (json.dumps(getter.result()) + "\n").encode()
            else:
                getter.cancel()
        try:
            yield (json.dumps({"template": task.result()}) + "\n").encode()
        except (APIError, OperationFailure) as exc:  # typed below the server: the image, its files
            answer = http_error(exc) if isinstance(exc, OperationFailure) else exc
            error = {"status": status_for(answer), "message": answer.message}
            yield (json.dumps({"error": error}) + "\n").encode()
        except Exception as exc:
            yield (json.dumps({"error": {"status": 500, "message": f"import failed: {exc}"}}) + "\n").encode()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@router.post("/template", status_code=201, **answers(rm.TemplateInfo), responses=_NDJSON)
@router.post(
    "/template/", status_code=201, include_in_schema=False, **answers(rm.TemplateInfo), responses=_NDJSON
)
async def create_template(body: CreateTemplateBody, org: Org, request: Request) -> Any:
    settings = services(request).settings
    # a refused source is a 400 even when progress would stream (checked again before the pull)
    await oci.check_source(body.uri, settings.import_dirs, settings.template_registries)
    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_progress_stream(request, org, body), status_code=201, media_type=NDJSON)
    return await _import(request, org, body)


@router.get("/templates", **answers(rm.TemplateList))
@router.get("/templates/", include_in_schema=False, **answers(rm.TemplateList))
async def list_templates(org: Org, request: Request) -> dict[str, Any]:
    items = [system_body(t) for t in _system(request)]
    items += [template_body(row) for row in await catalog(request).of_org(org)]
    return {"items": items, "total_items": len(items)}


@router.get("/template/{template_id}", **answers(rm.TemplateInfo))
@router.get("/template/{template_id}/", include_in_schema=False, **answers(rm.TemplateInfo))
async def get_template(template_id: str, org: Org, request: Request) -> dict[str, Any]:
    for template in _system(request):
        if template.id == template_id:
            return system_body(template)
    return template_body(await catalog(request).get(org, template_id))


@router.patch("/template/{template_id}", status_code=204)
@router.patch("/template/{template_id}/", status_code=204, include_in_schema=False)
async def rename_template(template_id: str, body: RenameTemplateBody, org: Org, request: Request) -> Response:
    _refuse_system(request, template_id, "renamed")
    await catalog(request).rename(org, template_id, body.name)
    return Response(status_code=204)


@router.delete("/template/{template_id}", status_code=204)
@router.delete("/template/{template_id}/", status_code=204, include_in_schema=False)
async def delete_template(template_id: str, org: Org, request: Request) -> Response:
    _refuse_system(request, template_id, "deleted")
    await catalog(request).delete(org, template_id)
    return Response(status_code=204)
