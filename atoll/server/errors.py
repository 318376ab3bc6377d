"""Every error leaves the API as JSON ``{"message"[, "errors"]}`` with the status its class in
``atoll._exceptions`` names; nothing unexpected ever leaks a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from atoll._exceptions import APIError, status_for

log = logging.getLogger("atoll.server")


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
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
