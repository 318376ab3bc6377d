"""``sandbox.lsp``: language servers inside a sandbox (agent-services §3): pyright for
``python``, typescript-language-server for ``typescript``/``javascript``, one per (sandbox,
language, project).

The flow is ``start`` -> ``did_open`` -> ``completions`` / ``document_symbols`` ->
``did_close`` -> ``stop``. ``completions`` and ``document_symbols`` answer the server's own
JSON-RPC envelope (``LspResponse``): a server-side error is its ``error``, not an exception. A
server that exited or crashed answers ``ConflictError`` until it is started again."""

from __future__ import annotations

from typing import Any

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._lsp import LspResponse, file_uri
from atoll.sdk._lsp import language as _language
from atoll.sdk._validation import sandbox_path
from atoll.sdk.models import SandboxRef, json_object


class AsyncLsp:
    """The language servers of one sandbox."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxRef) -> None:
        self._transport = transport
        self._sandbox = sandbox

    async def _post(
        self, op: str, body: dict[str, Any], http_timeout: float | None, expected_status: int = 200
    ) -> bytes:
        response = await self._transport.request(
            "POST",
            sandbox_path(self._sandbox, f"/lsp/{op}"),
            json=body,
            timeout=http_timeout,
            expected_status=expected_status,
        )
        return response.content

    async def start(
        self, language_id: str, path_to_project: str, *, http_timeout: float | None = None
    ) -> bool:
        """Start the server (``initialize`` + ``initialized``); starting a running one is a no-op."""
        body = {"language_id": _language(language_id), "path_to_project": path_to_project}
        return bool(json_object(await self._post("start", body, http_timeout)).get("success"))

    async def stop(
        self, language_id: str, path_to_project: str, *, http_timeout: float | None = None
    ) -> bool:
        """``shutdown`` + ``exit``; nothing of the server stays in the sandbox."""
        body = {"language_id": _language(language_id), "path_to_project": path_to_project}
        return bool(json_object(await self._post("stop", body, http_timeout)).get("success"))

    async def did_open(
        self,
        language_id: str,
        path_to_project: str,
        path: str,
        *,
        text: str | None = None,
        version: int = 1,
        http_timeout: float | None = None,
    ) -> None:
        """Open ``path`` (absolute); without ``text`` the server reads the sandbox's file."""
        body: dict[str, Any] = {
            "language_id": _language(language_id),
            "path_to_project": path_to_project,
            "uri": file_uri(path),
            "version": version,
        }
        if text is not None:
            body["text"] = text
        await self._post("did-open", body, http_timeout, 204)

    async def did_close(
        self, language_id: str, path_to_project: str, path: str, *, http_timeout: float | None = None
    ) -> None:
        body = {
            "language_id": _language(language_id),
            "path_to_project": path_to_project,
            "uri": file_uri(path),
        }
        await self._post("did-close", body, http_timeout, 204)

    async def completions(
        self,
        language_id: str,
        path_to_project: str,
        path: str,
        *,
        line: int,
        character: int,
        trigger_character: str | None = None,
        http_timeout: float | None = None,
    ) -> LspResponse:
        """``textDocument/completion`` at a zero-based ``line``/``character``."""
        body: dict[str, Any] = {
            "language_id": _language(language_id),
            "path_to_project": path_to_project,
            "uri": file_uri(path),
            "position": {"line": line, "character": character},
        }
        if trigger_character is not None:
            body["context"] = {"trigger_kind": 2, "trigger_character": trigger_character}
        return LspResponse.from_wire(json_object(await self._post("completions", body, http_timeout)))

    async def document_symbols(
        self, language_id: str, path_to_project: str, path: str, *, http_timeout: float | None = None
    ) -> LspResponse:
        """``textDocument/documentSymbol`` of an opened document."""
        body = {
            "language_id": _language(language_id),
            "path_to_project": path_to_project,
            "uri": file_uri(path),
        }
        return LspResponse.from_wire(json_object(await self._post("document-symbols", body, http_timeout)))
