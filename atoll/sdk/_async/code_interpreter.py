"""``sandbox.code_interpreter``: run Python or TypeScript/JavaScript in a sandbox (agent-services §1).

The interpreter is a service inside the sandbox (template ``system/code-interpreter:v0.1.0``,
``atoll.CODE_INTERPRETER_TEMPLATE``), reached on the sandbox's own host
``{scheme}://{id}.{sandbox_domain}`` through the router, not through the control plane; the API
key goes along as a bearer token.

``execute`` waits and returns everything: rich items (the last expression's value, figures),
logs, and the code's own exception. ``execute_stream`` yields stdout/stderr as the code produces
them and ends with an ``exit`` event; it carries no rich items. Variables, imports and the cwd
persist in a context: each language has a default one, ``create_context`` makes more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, TypeAlias
from urllib.parse import quote

import httpx

from atoll._exceptions import NotFoundError, ServerError, TransportError
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._interpreter import (
    CODE_INTERPRETER_TEMPLATE,
    SERVICE_ABSENT_STATUSES,
    CodeContext,
    ContextRef,
    ExecutionResult,
    StreamEvent,
    check_context_id,
    context_body,
    execute_body,
    execute_http_timeout,
    service_absent,
    stream_event,
)
from atoll.sdk._sse import SSEDecoder
from atoll.sdk.models import json_object

_Contexts: TypeAlias = "list[CodeContext]"


class SandboxHost(Protocol):
    """What the interpreter needs of a sandbox: its id and the URL of its own host."""

    @property
    def id(self) -> str: ...

    def invoke_url(self, path: str = "/", *, port: int | None = None) -> str: ...


class AsyncCodeInterpreter:
    """The code interpreter of one sandbox."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxHost) -> None:
        self._transport = transport
        self._sandbox = sandbox

    def _host(self) -> AsyncTransport:
        # Built on each call, not once: the sandbox URL comes from the client's settings, which
        # may change after this handle was made (the scheme learned from the server).
        return self._transport.for_base_url(self._sandbox.invoke_url("/").rstrip("/"))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        expected_status: int = 200,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        host = self._host()
        try:
            return await host.request(
                method, path, json=json, expected_status=expected_status, timeout=http_timeout
            )
        except ServerError as exc:
            if exc.status_code not in SERVICE_ABSENT_STATUSES:
                raise
            raise service_absent(exc, self._sandbox.id) from exc
        except TransportError as exc:
            exc.add_note(f"sandbox URL: {host.base_url}")  # the error names only the path
            raise

    async def health(self, http_timeout: float | None = None) -> bool:
        """Whether the interpreter answers and reports itself ready."""
        try:
            response = await self._request("GET", "/healthz", http_timeout=http_timeout)
        except NotFoundError as exc:
            exc.add_note(f"not a code interpreter: was the sandbox made from {CODE_INTERPRETER_TEMPLATE!r}?")
            raise
        return json_object(response.content).get("status") == "ok"

    async def execute(
        self,
        code: str,
        *,
        language: str | int = "python",
        context_id: ContextRef | None = None,
        env_vars: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        http_timeout: float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and wait for the whole result. An exception in the code is not raised:
        it is ``result.error`` (with its traceback). ``timeout_ms`` is the code's limit, enforced
        by the interpreter (default 30 s); ``env_vars`` apply to this execution only; without
        ``context_id`` the language's default context is used."""
        body = execute_body(
            code=code, language=language, context=context_id, env_vars=env_vars, timeout_ms=timeout_ms
        )
        response = await self._request(
            "POST",
            "/execute",
            json=body,
            http_timeout=execute_http_timeout(timeout_ms, http_timeout, self._transport.timeout),
        )
        return ExecutionResult.from_dict(json_object(response.content))

    async def execute_stream(
        self,
        code: str,
        *,
        language: str | int = "python",
        context_id: ContextRef | None = None,
        timeout_ms: int | None = None,
        http_timeout: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Run ``code`` and yield its output as it is produced: ``stdout``/``stderr`` events, an
        ``error`` event if it raised, and ``exit`` last. ``http_timeout`` bounds each wait for the
        next chunk, not the whole run. Closing the iterator early (``close``/``aclose``, or
        dropping it) closes the connection, and the interpreter then interrupts the code."""
        body = execute_body(
            code=code, language=language, context=context_id, env_vars=None, timeout_ms=timeout_ms
        )
        seconds = execute_http_timeout(timeout_ms, http_timeout, self._transport.timeout)
        decoder = SSEDecoder()
        host = self._host()
        try:
            async with host.stream("POST", "/execute/async", json=body, timeout=seconds) as response:
                async for chunk in response.aiter_bytes():
                    for payload in decoder.feed(chunk):
                        event = stream_event(payload)
                        if event is not None:
                            yield event
        except ServerError as exc:
            if exc.status_code not in SERVICE_ABSENT_STATUSES:
                raise
            raise service_absent(exc, self._sandbox.id) from exc
        except TransportError as exc:
            exc.add_note(f"sandbox URL: {host.base_url}")
            raise
        for payload in decoder.close():
            event = stream_event(payload)
            if event is not None:
                yield event

    async def create_context(
        self, language: str | int = "python", *, cwd: str | None = None, http_timeout: float | None = None
    ) -> CodeContext:
        """A new context (default cwd ``/home/user``); pass it as ``context_id`` to share state."""
        response = await self._request(
            "POST",
            "/contexts",
            json=context_body(language=language, cwd=cwd),
            expected_status=201,
            http_timeout=http_timeout,
        )
        return CodeContext.from_dict(json_object(response.content))

    async def list_contexts(self, http_timeout: float | None = None) -> _Contexts:
        response = await self._request("GET", "/contexts", http_timeout=http_timeout)
        found = json_object(response.content).get("items")
        return [CodeContext.from_dict(item) for item in found or [] if isinstance(item, Mapping)]

    async def get_context(self, context: ContextRef, http_timeout: float | None = None) -> CodeContext:
        response = await self._request("GET", _context_path(context), http_timeout=http_timeout)
        return CodeContext.from_dict(json_object(response.content))

    async def delete_context(self, context: ContextRef, http_timeout: float | None = None) -> None:
        """Forget a context and everything defined in it."""
        await self._request("DELETE", _context_path(context), expected_status=204, http_timeout=http_timeout)


def _context_path(context: ContextRef) -> str:
    return f"/contexts/{quote(check_context_id(context, 'context'), safe='')}"
