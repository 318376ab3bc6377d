"""Every error leaves the API as JSON ``{"message"[, "errors"]}`` with the status its class in
``atoll._exceptions`` names; nothing unexpected ever leaks a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from atoll._exceptions import (
    AgentProtocolError,
    AgentUnavailable,
    APIError,
    BadRequestError,
    BadWorkingDirectory,
    CapacityError,
    ClusterCapacityExhausted,
    ConflictError,
    ExecSetupFailed,
    FileAccessDenied,
    FileConflict,
    FileFailure,
    FileNotFound,
    FileRequestInvalid,
    FileStorageFull,
    HostCapacityExhausted,
    ImageRejected,
    NodeUnreachable,
    NotFoundError,
    OperationFailure,
    PermissionDeniedError,
    ProcessLimitReached,
    ProcessNotFound,
    ProcessStateConflict,
    ProcessTableFull,
    SandboxFailure,
    SandboxNotRunning,
    ServerError,
    TemplateConflict,
    TemplateFailure,
    TemplateNotFound,
    TerminalStartFailed,
    UnavailableError,
    status_for,
)

log = logging.getLogger("atoll.server")


def _field(loc: tuple[int | str, ...]) -> str:
    # only the first item names where the value was (a body field may itself be called "path")
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    parts = [str(p) for p in loc]
    return ".".join(parts) or "body"


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return JSONResponse({"message": "request body is not valid JSON"}, status_code=400)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.append({"field": _field(tuple(error.get("loc", ()))), "error": message})
    summary = "; ".join(f"{e['field']}: {e['error']}" for e in errors)
    return JSONResponse({"message": f"invalid request: {summary}", "errors": errors}, status_code=400)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


def error_response(exc: APIError) -> JSONResponse:
    """The response an API error leaves as (also for code outside the routes: middleware)."""
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after is not None else None
    return JSONResponse(exc.to_body(), status_code=status_for(exc), headers=headers)


# The one table from the typed failures below the server (``atoll._exceptions``: OperationFailure)
# to HTTP; the most specific class of the failure's MRO decides. ``subject`` names what could not
# start ("process", "PTY") in the messages.
_HOST_FULL_RETRY_AFTER_S = 5  # a host's addresses or slots free up as sandboxes end, not at once
_RETRY_AFTER_S = 1  # a process limit or table frees up as soon as something in the sandbox ends
_FAILURES: dict[type[OperationFailure], Callable[[OperationFailure, str], APIError]] = {
    BadWorkingDirectory: lambda _, subject: BadRequestError(
        f"invalid {subject} parameters", errors=[{"field": "cwd", "error": "directory does not exist"}]
    ),
    # EAGAIN: the sandbox's own process limit is used up (e.g. by a fork bomb still being
    # reaped); transient, and the sandbox's doing, not the server's
    ProcessLimitReached: lambda _, __: CapacityError(
        "the sandbox has no room for a new process (its process limit is reached); retry",
        retry_after=_RETRY_AFTER_S,
    ),
    ProcessTableFull: lambda _, __: CapacityError(
        "the sandbox runs as many background processes as it can track; end one and retry",
        retry_after=_RETRY_AFTER_S,
    ),
    # its runtime ended under it (e.g. the host's OOM killer ended a gVisor sentry that went past
    # its memory limit): the sandbox's state, not a server failure
    SandboxNotRunning: lambda _, __: ConflictError(
        "the sandbox's runtime is no longer running (it may have run out of memory); delete the sandbox"
    ),
    AgentUnavailable: lambda _, __: ConflictError(
        "the sandbox's agent does not answer (it may have been stopped or ended); delete the sandbox"
    ),
    ProcessNotFound: lambda _, __: NotFoundError("process not found"),
    ProcessStateConflict: lambda exc, _: ConflictError(exc.message),
    TerminalStartFailed: lambda exc, _: ServerError(f"could not start the terminal: {exc.message}"),
    AgentProtocolError: lambda exc, _: ServerError(f"the sandbox's agent failed the request: {exc.message}"),
    ExecSetupFailed: lambda exc, subject: ServerError(f"could not start the {subject}: {exc.message}"),
    FileRequestInvalid: lambda exc, _: BadRequestError(exc.message, errors=getattr(exc, "errors", None)),
    FileNotFound: lambda exc, _: NotFoundError(exc.message),
    FileConflict: lambda exc, _: ConflictError(exc.message),
    FileAccessDenied: lambda exc, _: PermissionDeniedError(exc.message),
    FileStorageFull: lambda exc, _: ServerError(exc.message, status_code=507),
    FileFailure: lambda exc, _: ServerError(exc.message),
    SandboxFailure: lambda exc, _: ServerError(exc.message),
    TemplateNotFound: lambda exc, _: NotFoundError(exc.message),
    TemplateConflict: lambda exc, _: ConflictError(exc.message),
    ImageRejected: lambda exc, _: BadRequestError(exc.message, errors=getattr(exc, "errors", None)),
    TemplateFailure: lambda exc, _: ServerError(exc.message),
    HostCapacityExhausted: lambda exc, _: CapacityError(exc.message, retry_after=_HOST_FULL_RETRY_AFTER_S),
    ClusterCapacityExhausted: lambda exc, _: CapacityError(exc.message, retry_after=_retry_after_s(exc)),
    NodeUnreachable: lambda exc, _: UnavailableError(exc.message, retry_after=_HOST_FULL_RETRY_AFTER_S),
    OperationFailure: lambda exc, _: ServerError(exc.message),
}


def _retry_after_s(exc: OperationFailure) -> float:
    return exc.retry_after_s if isinstance(exc, ClusterCapacityExhausted) else _RETRY_AFTER_S


def http_error(exc: OperationFailure, *, subject: str = "process") -> APIError:
    """The API error a failure below the server answers with."""
    for kind in type(exc).__mro__:
        if kind in _FAILURES:
            return _FAILURES[kind](exc, subject)
    return ServerError(exc.message)  # unreachable: OperationFailure is in the table


async def _operation_failure(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OperationFailure)
    return await _api_error(request, http_error(exc))


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, _: Exception) -> JSONResponse:
    """A client that hung up before its body arrived (an upload given up), or before its answer
    (a create), is not the server's error: what it began is undone where it was begun
    (``version.abort``, the create's delete), and nobody reads this."""
    log.info("client gave up %s %s before its answer", request.method, request.url.path)
    return JSONResponse({"message": "the client closed the request before its answer"}, status_code=400)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"message": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(OperationFailure, _operation_failure)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    _document(app)


# the error model in the OpenAPI document: what clients (and the API fuzzer) are promised
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "error"],
                "properties": {"field": {"type": "string"}, "error": {"type": "string"}},
            },
        },
    },
}
_ERROR_REF = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_DESCRIPTIONS = {
    "400": "Invalid request (``errors`` lists the fields)",
    "401": "Missing or invalid API key",
    "404": "No such resource in the caller's organisation",
    "409": "Wrong state, duplicate name or organisation limit",
    "429": "Rate or organisation limit reached; see Retry-After",
    "default": "Any other error, in the same shape (403, 413, 5xx ...)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def _document(app: FastAPI) -> None:
    """Replace FastAPI's unused 422 with the error responses every operation can give."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        for unused in ("HTTPValidationError", "ValidationError"):  # 400 replaces FastAPI's 422
            schema["components"]["schemas"].pop(unused, None)
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                codes = ["400", "default"] if path == "/v1/health" else list(_DESCRIPTIONS)
                for code in codes:
                    responses.setdefault(code, {"description": _DESCRIPTIONS[code], **_ERROR_REF})
                if "429" in responses:
                    responses["429"]["headers"] = _RETRY_AFTER
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
