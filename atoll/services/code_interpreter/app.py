"""HTTP routes of the code interpreter (leap0 wire: /healthz, /execute, /execute/async, /contexts).

``/execute/async`` streams ``stdout``/``stderr`` events as produced, then ``error`` (the traceback
text) if the cell failed, then ``exit`` with ``code`` 0 or 1. Rich results (the last expression's
value, figures, HTML) are not streamed: they come only in ``/execute``'s ``items``. A client that
disconnects from the stream interrupts the running cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .bodies import BadRequestError, ExecuteBody, parse_context, parse_execute, parse_json
from .config import MAX_BODY_BYTES, Settings
from .contexts import (
    Context,
    ContextError,
    Contexts,
    KernelUnavailableError,
    TooManyContextsError,
    UnknownContextError,
)
from .kernels.base import Language
from .outputs import Execution

log = logging.getLogger(__name__)

_KEEPALIVE_S = 15.0  # an SSE comment while a cell is silent, so proxies keep the stream open


class BodyTooLargeError(Exception):
    pass


async def _read_json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _contexts(request: Request) -> Contexts:
    contexts: Contexts = request.app.state.contexts
    return contexts


async def _target(contexts: Contexts, body: ExecuteBody) -> Context:
    # An explicit context wins over `language` (the SDK always sends one, "python" by default).
    if body.context_id is not None:
        return contexts.get(body.context_id)
    return await contexts.default(body.language)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def execute(request: Request) -> Response:
    body = parse_execute(await _read_json(request), allow_env=True)
    contexts = _contexts(request)
    context = await _target(contexts, body)
    out = Execution(context.id)
    await contexts.execute(context, body.code, out, env_vars=body.env_vars, timeout_s=body.timeout_ms / 1000)
    return JSONResponse(out.result())


async def execute_stream(request: Request) -> Response:
    body = parse_execute(await _read_json(request), allow_env=False)
    contexts = _contexts(request)
    context = await _target(contexts, body)
    out = Execution(context.id, live=True)
    task = asyncio.create_task(
        contexts.execute(context, body.code, out, env_vars={}, timeout_s=body.timeout_ms / 1000)
    )
    running: set[asyncio.Task[None]] = request.app.state.running
    running.add(task)
    task.add_done_callback(running.discard)
    return StreamingResponse(
        _sse(out, task),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _sse(out: Execution, task: asyncio.Task[None]) -> AsyncIterator[str]:
    assert out.live is not None
    try:
        while True:
            event = await out.live.get(_KEEPALIVE_S)
            if event is None:
                yield ": keepalive\n\n"
                continue
            yield f"data: {json.dumps(event.wire())}\n\n"
            if event.type == "exit":
                return
    finally:
        if not task.done():
            out.cancelled.set()  # the client went away mid-cell: interrupt it


async def create_context(request: Request) -> Response:
    body = parse_context(await _read_json(request))
    context = await _contexts(request).create(body.language, body.cwd)
    return JSONResponse(context.wire(), status_code=201)


async def list_contexts(request: Request) -> Response:
    return JSONResponse({"items": [c.wire() for c in _contexts(request).list()]})


async def get_context(request: Request) -> Response:
    return JSONResponse(_contexts(request).get(request.path_params["context_id"]).wire())


async def delete_context(request: Request) -> Response:
    await _contexts(request).delete(request.path_params["context_id"])
    return Response(status_code=204)


# ---- errors: the status of each failure is chosen here only -------------------------------------
async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequestError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _too_large(request: Request, exc: Exception) -> Response:
    return JSONResponse({"message": f"request body is larger than {MAX_BODY_BYTES} bytes"}, status_code=413)


_CONTEXT_STATUS: dict[type[ContextError], int] = {
    UnknownContextError: 404,
    TooManyContextsError: 409,
    KernelUnavailableError: 503,
}


async def _context_error(request: Request, exc: Exception) -> Response:
    status = next((s for kind, s in _CONTEXT_STATUS.items() if isinstance(exc, kind)), 500)
    return JSONResponse({"message": str(exc)}, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        contexts = Contexts(settings)
        app.state.contexts = contexts
        app.state.running = set()
        # The default Python kernel starts before the port opens: once /healthz answers, the first
        # execute is fast (and a checkpoint taken then holds a warm kernel).
        eager: list[Language] = ["python"]
        if settings.eager_typescript and settings.node:
            eager.append("typescript")
        for language in eager:
            try:
                await contexts.default(language)
            except ContextError:
                log.exception("default %s context (will retry on first use)", language)
        try:
            yield
        finally:
            for task in list(app.state.running):
                task.cancel()
            await contexts.close()
            shutil.rmtree(settings.run_dir, ignore_errors=True)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/execute", execute, methods=["POST"]),
        Route("/execute/async", execute_stream, methods=["POST"]),
        Route("/contexts", create_context, methods=["POST"]),
        Route("/contexts", list_contexts, methods=["GET"]),
        Route("/contexts/{context_id}", get_context, methods=["GET"]),
        Route("/contexts/{context_id}", delete_context, methods=["DELETE"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            BadRequestError: _bad_request,
            BodyTooLargeError: _too_large,
            ContextError: _context_error,
            HTTPException: _http_error,
        },
    )
