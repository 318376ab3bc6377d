"""Every error leaves the API as JSON ``{"message"[, "errors"]}`` with the status its class in
``atoll._exceptions`` names; nothing unexpected ever leaks a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from atoll._exceptions import APIError, status_for

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
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after is not None else None
    return JSONResponse(exc.to_body(), status_code=status_for(exc), headers=headers)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"message": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http)
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
