"""``/v1/sandbox/{id}/lsp/...`` (agent-services spec §3): language servers inside a sandbox,
run by ``atoll.server.lsp``. A paused sandbox resumes on any of these calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from atoll.server import response_models as rm
from atoll.server.auth import require_org
from atoll.server.lsp import DOCUMENT_MAX_BYTES, LspService
from atoll.server.response_models import answers
from atoll.server.schemas import StrictInt, Text
from atoll.server.state import services

router = APIRouter(prefix="/v1/sandbox/{sandbox_id}/lsp", tags=["lsp"])
Org = Annotated[str, Depends(require_org)]
Language = Literal["python", "typescript", "javascript"]
Project = Annotated[Text, Field(min_length=1, max_length=4096)]
Uri = Annotated[Text, Field(min_length=1, max_length=8192)]
F = TypeVar("F", bound=Callable[..., Any])
Position = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class ServerBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    language_id: Language
    path_to_project: Project


class DocumentBody(ServerBody):
    uri: Uri


class OpenBody(DocumentBody):
    text: Annotated[str, Field(max_length=DOCUMENT_MAX_BYTES)] | None = None
    version: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 1


class PositionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    line: Position
    character: Position


class CompletionContext(BaseModel):
    model_config = ConfigDict(extra="ignore")
    trigger_kind: Annotated[StrictInt, Field(ge=1, le=3)] = 1
    trigger_character: Annotated[str, Field(max_length=8)] | None = None


class CompletionsBody(DocumentBody):
    position: PositionBody
    context: CompletionContext | None = None


def service(request: Request) -> LspService:
    found = services(request).lsp
    return found


def _route(path: str, **kwargs: Any) -> Callable[[F], F]:
    def register(fn: F) -> F:
        router.post(path, **kwargs)(fn)
        router.post(path + "/", include_in_schema=False, **kwargs)(fn)
        return fn

    return register


@_route("/start", **answers(rm.LspSuccess))
async def start(sandbox_id: str, body: ServerBody, org: Org, request: Request) -> dict[str, bool]:
    await service(request).start(org, sandbox_id, body.language_id, body.path_to_project)
    return {"success": True}


@_route("/stop", **answers(rm.LspSuccess))
async def stop(sandbox_id: str, body: ServerBody, org: Org, request: Request) -> dict[str, bool]:
    await service(request).stop(org, sandbox_id, body.language_id, body.path_to_project)
    return {"success": True}


@_route("/did-open", status_code=204)
async def did_open(sandbox_id: str, body: OpenBody, org: Org, request: Request) -> Response:
    await service(request).did_open(
        org,
        sandbox_id,
        body.language_id,
        body.path_to_project,
        uri=body.uri,
        text=body.text,
        version=body.version,
    )
    return Response(status_code=204)


@_route("/did-close", status_code=204)
async def did_close(sandbox_id: str, body: DocumentBody, org: Org, request: Request) -> Response:
    await service(request).did_close(org, sandbox_id, body.language_id, body.path_to_project, body.uri)
    return Response(status_code=204)


@_route("/completions", response_model=rm.LspAnswer)
async def completions(sandbox_id: str, body: CompletionsBody, org: Org, request: Request) -> Response:
    params: dict[str, Any] = {
        "textDocument": {"uri": body.uri},
        "position": {"line": body.position.line, "character": body.position.character},
    }
    if body.context is not None:
        context: dict[str, Any] = {"triggerKind": body.context.trigger_kind}
        if body.context.trigger_character is not None:
            context["triggerCharacter"] = body.context.trigger_character
        params["context"] = context
    # the language server's answer as it sent it (JSONResponse: the model documents, never rewrites)
    return JSONResponse(
        await service(request).call(
            org, sandbox_id, body.language_id, body.path_to_project, "textDocument/completion", params
        )
    )


@_route("/document-symbols", response_model=rm.LspAnswer)
async def document_symbols(sandbox_id: str, body: DocumentBody, org: Org, request: Request) -> Response:
    return JSONResponse(
        await service(request).call(
            org,
            sandbox_id,
            body.language_id,
            body.path_to_project,
            "textDocument/documentSymbol",
            {"textDocument": {"uri": body.uri}},
        )
    )
