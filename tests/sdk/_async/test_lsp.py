"""``sandbox.lsp`` against a fake control plane: the wire bodies (spec §3), the JSON-RPC
envelope parsed as sent, errors mapped, and bad arguments refused before sending."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from atoll import AsyncClient, AsyncSandbox, ConflictError, InvalidArgument, LspError, MalformedResponseError

from .._mock import Router, sandbox_json

LSP = "/v1/sandbox/sbx-abc123/lsp"
PROJECT = "/home/user/p"


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
    )


async def created(router: Router) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router).sandboxes.create()


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


async def test_lifecycle_and_documents_send_the_wire_bodies() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{LSP}/start", json={"success": True})
    router.on("POST", f"{LSP}/stop", json={"success": True})
    router.on("POST", f"{LSP}/did-open", 204)
    router.on("POST", f"{LSP}/did-close", 204)
    assert await sandbox.lsp.start("python", PROJECT) is True
    assert body(router.last) == {"language_id": "python", "path_to_project": PROJECT}
    await sandbox.lsp.did_open("python", PROJECT, "/home/user/p/a b.py", text="x = 1", version=3)
    assert body(router.last) == {
        "language_id": "python",
        "path_to_project": PROJECT,
        "uri": "file:///home/user/p/a%20b.py",
        "version": 3,
        "text": "x = 1",
    }
    await sandbox.lsp.did_open("python", PROJECT, "/home/user/p/b.py")
    assert "text" not in body(router.last)  # the server reads the sandbox's file
    await sandbox.lsp.did_close("python", PROJECT, "/home/user/p/b.py")
    assert body(router.last)["uri"] == "file:///home/user/p/b.py"
    assert await sandbox.lsp.stop("python", PROJECT) is True


async def test_requests_answer_the_servers_envelope() -> None:
    router = Router()
    sandbox = await created(router)
    items = {"isIncomplete": False, "items": [{"label": "path"}]}
    router.on("POST", f"{LSP}/completions", json={"jsonrpc": "2.0", "id": 7, "result": items})
    answer = await sandbox.lsp.completions("typescript", PROJECT, "/home/user/p/m.ts", line=1, character=5)
    assert answer.result == items and answer.id == 7 and answer.error is None
    assert body(router.last)["position"] == {"line": 1, "character": 5}
    assert "context" not in body(router.last)
    await sandbox.lsp.completions(
        "typescript", PROJECT, "/p/m.ts", line=0, character=2, trigger_character="."
    )
    assert body(router.last)["context"] == {"trigger_kind": 2, "trigger_character": "."}
    failed = {"jsonrpc": "2.0", "id": 8, "error": {"code": -32601, "message": "no such method"}}
    router.on("POST", f"{LSP}/document-symbols", json=failed)
    answer = await sandbox.lsp.document_symbols("python", PROJECT, "/home/user/p/a.py")
    assert answer.error == LspError(-32601, "no such method") and answer.result is None
    router.on("POST", f"{LSP}/document-symbols", json={"success": True})
    with pytest.raises(MalformedResponseError):
        await sandbox.lsp.document_symbols("python", PROJECT, "/home/user/p/a.py")


async def test_a_gone_server_is_an_error_and_bad_arguments_never_leave() -> None:
    router = Router()
    sandbox = await created(router)
    gone = {"message": "the python language server for /home/user/p is not running: it exited"}
    router.on("POST", f"{LSP}/completions", 409, json=gone)
    with pytest.raises(ConflictError, match="not running"):
        await sandbox.lsp.completions("python", PROJECT, "/home/user/p/a.py", line=0, character=0)
    sent = len(router.requests)
    with pytest.raises(InvalidArgument):
        await sandbox.lsp.start("cobol", PROJECT)
    with pytest.raises(InvalidArgument):
        await sandbox.lsp.did_open("python", PROJECT, "relative.py")
    assert len(router.requests) == sent
