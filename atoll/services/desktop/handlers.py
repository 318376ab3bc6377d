"""The desktop service's error answers: JSON bodies with a ``message``, as the leap0 wire has them."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .bodies import BadRequestError


async def bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequestError)
    return JSONResponse(exc.body(), status_code=400)


def status(code: int, message: str) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        return JSONResponse({"message": message}, status_code=code)

    return handler


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code)


async def input_failed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"message": str(exc)}, status_code=500)
