"""Language servers in sandboxes (agent-services spec §3, leap0's ``lsp`` wire).

One server per (sandbox, language, project), living inside the sandbox: ``start`` runs the
bridge (``atoll.services.lsp_bridge``) through the agent's ``exec`` with a fresh token; the
bridge listens on the sandbox's own address, detaches and prints its port; the host connects
(as the router does, straight to the sandbox's address), presents the token, and then speaks
JSON-RPC to the server through it (``atoll.server.lsp_rpc``). The connection is the server's
life: closing it makes the bridge kill the server's process group, and a server that exits
or is killed closes it, which fails every waiting and later call at once (409) instead of
hanging. Sessions live in memory and end with their sandbox (the manager's teardown hook) and
with the server; a sandbox with a live one pauses by freezing (the connection is host state
a checkpoint cannot carry)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import secrets
import socket
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Any

from atoll._exceptions import BadRequestError, ConflictError, SandboxFailure, ServerError
from atoll.runtime import confined
from atoll.runtime.spec import ExecRequest
from atoll.server.errors import http_error
from atoll.server.lsp_rpc import Connection, LspGone
from atoll.server.manager import SandboxManager
from atoll.services import lsp_bridge
from atoll.store.models import SandboxRow

log = logging.getLogger("atoll.lsp")

# language_id -> the server's command (looked up on the sandbox's PATH)
SERVERS: dict[str, tuple[str, ...]] = {
    "python": ("pyright-langserver", "--stdio"),
    "typescript": ("typescript-language-server", "--stdio"),
    "javascript": ("typescript-language-server", "--stdio"),
}
MAX_SERVERS_PER_SANDBOX = 8
DOCUMENT_MAX_BYTES = 8 << 20
LAUNCH_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
INITIALIZE_TIMEOUT_S = 120.0  # a cold pyright under gVisor takes seconds
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# runs the bridge, which comes in the environment: nothing is written into the sandbox
LAUNCH = "import os;exec(compile(os.environ['ATOLL_LSP_BRIDGE'],'atoll-lsp-bridge','exec'))"
_BRIDGE_SOURCE = lsp_bridge.source()

Key = tuple[str, str]  # (language_id, project directory)


@dataclass(eq=False)
class Session:
    language_id: str
    project: str
    connection: Connection
    capabilities: dict[str, Any]


def file_uri(path: str) -> str:
    return "file://" + urllib.parse.quote(path)


def uri_path(uri: str) -> str:
    """The sandbox path a ``file://`` URI names (400 for any other URI)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise BadRequestError(
            "invalid LSP parameters", errors=[{"field": "uri", "error": "must be a file:// URI"}]
        )
    return confined.normalize(urllib.parse.unquote(parsed.path))


def document_language(language_id: str, uri: str) -> str:
    """The ``languageId`` of a document: the typescript server serves JS and JSX too."""
    if language_id == "python":
        return "python"
    ext = posixpath.splitext(urllib.parse.urlsplit(uri).path)[1].lower()
    return {
        ".js": "javascript",
        ".mjs": "javascript",
        ".cjs": "javascript",
        ".jsx": "javascriptreact",
        ".tsx": "typescriptreact",
    }.get(ext, "typescript")


def _initialize_params(project: str) -> dict[str, Any]:
    root = file_uri(project)
    return {
        "processId": None,
        "clientInfo": {"name": "atoll"},
        "rootUri": root,
        "rootPath": project,
        "workspaceFolders": [{"uri": root, "name": posixpath.basename(project) or "/"}],
        "capabilities": {
            "textDocument": {
                "synchronization": {"didSave": True, "dynamicRegistration": False},
                "completion": {
                    "completionItem": {
                        "snippetSupport": False,
                        "documentationFormat": ["markdown", "plaintext"],
                    },
                    "contextSupport": True,
                },
                "documentSymbol": {"hierarchicalDocumentSymbolSupport": True},
                "publishDiagnostics": {"relatedInformation": False},
            },
            "workspace": {"configuration": True, "workspaceFolders": True},
        },
    }


class LspService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._sessions: dict[str, dict[Key, Session]] = {}
        self._starting: dict[tuple[str, Key], asyncio.Lock] = {}
        manager.host.teardown_hooks.append(self.end_sandbox)
        manager.host.checkpoint_vetoes.append(self.has_live_sessions)

    def has_live_sessions(self, sandbox_id: str) -> bool:
        return any(s.connection.gone is None for s in self._sessions.get(sandbox_id, {}).values())

    # lookups ------------------------------------------------------------------------------
    async def _row(self, org_id: str, sandbox_id: str) -> SandboxRow:
        return await self.manager.ensure_running(await self.manager.get(org_id, sandbox_id))

    def _project(self, row: SandboxRow, path_to_project: str) -> str:
        workdir = self.manager.template_for(row).workdir or "/"
        return confined.normalize(path_to_project, base=workdir)

    async def session(self, org_id: str, sandbox_id: str, language_id: str, path_to_project: str) -> Session:
        """The running server, or 409 saying why there is none (never started, or it ended)."""
        row = await self._row(org_id, sandbox_id)
        project = self._project(row, path_to_project)
        found = self._sessions.get(row.id, {}).get((language_id, project))
        if found is None:
            raise ConflictError(
                f"no {language_id} language server is running for {project}: call lsp/start first"
            )
        if found.connection.gone is not None:
            raise LspGone(
                f"the {found.connection.name} is not running: {found.connection.gone}; start it again"
            )
        return found

    # lifecycle ----------------------------------------------------------------------------
    async def start(self, org_id: str, sandbox_id: str, language_id: str, path_to_project: str) -> None:
        row = await self._row(org_id, sandbox_id)
        project = self._project(row, path_to_project)
        key = (language_id, project)
        lock = self._starting.setdefault((row.id, key), asyncio.Lock())
        try:
            async with lock:
                sessions = self._sessions.setdefault(row.id, {})
                existing = sessions.get(key)
                if existing is not None and existing.connection.gone is None:
                    return  # already running: start is idempotent
                live = sum(1 for s in sessions.values() if s.connection.gone is None)
                if live >= MAX_SERVERS_PER_SANDBOX:
                    raise ConflictError(f"at most {MAX_SERVERS_PER_SANDBOX} language servers per sandbox")
                await asyncio.to_thread(self._check_project, row, project)
                session = await self._launch(row, language_id, project)
                if existing is not None:
                    await existing.connection.close("replaced")
                if self._sessions.get(row.id) is not sessions:  # the sandbox went meanwhile
                    await session.connection.close("the sandbox was deleted")
                    raise ConflictError("the sandbox was deleted while its language server started")
                sessions[key] = session
        finally:
            if not lock.locked():
                self._starting.pop((row.id, key), None)

    def _check_project(self, row: SandboxRow, project: str) -> None:
        root = confined.Root.open(str(self.manager.host.sandbox_dir(row.id) / "rootfs"))
        try:
            with confined.mapped(project):
                info = root.stat(project)
        except Exception:
            info = None
        finally:
            root.close()
        if info is None or not stat.S_ISDIR(info.st_mode):
            raise BadRequestError(
                "invalid LSP parameters",
                errors=[{"field": "path_to_project", "error": f"{project}: no such directory"}],
            )

    async def _launch(self, row: SandboxRow, language_id: str, project: str) -> Session:
        slot = self.manager.slot_of(row)
        if slot is None:
            raise ConflictError(f"sandbox {row.id} has no network address for its language server")
        token = secrets.token_urlsafe(24)
        template = self.manager.template_for(row)
        command = SERVERS[language_id]
        request = ExecRequest(
            argv=("python3", "-c", LAUNCH, slot.sandbox_ip, project, "--", *command),
            env={
                **template.sandbox_env(),
                **row.env_vars,
                "ATOLL_LSP_TOKEN": token,
                "ATOLL_LSP_BRIDGE": _BRIDGE_SOURCE,
            },
            cwd="/",
            timeout=LAUNCH_TIMEOUT_S,
            max_output_bytes=65536,
        )
        try:
            result = await self.manager.host.backend_for(row).exec(row.id, request)
        except SandboxFailure as exc:
            raise http_error(exc, subject="language server's bridge") from None
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.exit_code == 127:
            missing = command[0] if "python3" not in output else "python3"
            raise ConflictError(
                f"{missing} is not installed in this sandbox (template {row.template_name!r}); "
                f"the {language_id} language server needs it"
            )
        if result.exit_code != 0 or not result.stdout.strip().isdigit():
            failed = f"exit {result.exit_code}: {output[-500:]}"
            raise ServerError(f"the language server's bridge failed ({failed})")
        port = int(result.stdout.strip())
        name = f"{language_id} language server for {project}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(slot.sandbox_ip, port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise ServerError(f"could not reach the {name}: {exc}") from None
        with contextlib.suppress(OSError):  # small messages both ways: no Nagle delay
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(token.encode() + b"\n")
        connection = Connection(reader, writer, name)
        try:
            answer = await connection.request(
                "initialize", _initialize_params(project), timeout_s=INITIALIZE_TIMEOUT_S
            )
            if "error" in answer:
                raise ServerError(f"the {name} refused to initialize: {answer['error']}")
            await connection.notify("initialized", {})
        except BaseException:
            await connection.close("it failed to initialize")
            raise
        result_body = answer.get("result") or {}
        capabilities = result_body.get("capabilities", {}) if isinstance(result_body, dict) else {}
        return Session(language_id, project, connection, capabilities)

    async def stop(self, org_id: str, sandbox_id: str, language_id: str, path_to_project: str) -> None:
        """``shutdown`` + ``exit``, then the bridge ends whatever is left; idempotent."""
        row = await self._row(org_id, sandbox_id)
        project = self._project(row, path_to_project)
        session = self._sessions.get(row.id, {}).pop((language_id, project), None)
        if session is None:
            return
        connection = session.connection
        if connection.gone is None:
            with contextlib.suppress(Exception):
                await connection.request("shutdown", None, timeout_s=STOP_TIMEOUT_S)
                await connection.notify("exit", None)
        await connection.finish(STOP_TIMEOUT_S)

    async def end_sandbox(self, sandbox_id: str) -> None:
        """Teardown hook: the sandbox's processes are about to go; so do its connections."""
        for session in self._sessions.pop(sandbox_id, {}).values():
            await session.connection.close("its sandbox was deleted or stopped")

    async def close(self) -> None:
        for sandbox_id in list(self._sessions):
            await self.end_sandbox(sandbox_id)

    # documents ----------------------------------------------------------------------------
    async def did_open(
        self,
        org_id: str,
        sandbox_id: str,
        language_id: str,
        path_to_project: str,
        *,
        uri: str,
        text: str | None,
        version: int,
    ) -> None:
        session = await self.session(org_id, sandbox_id, language_id, path_to_project)
        if text is None:
            text = await asyncio.to_thread(self._read_document, sandbox_id, uri_path(uri))
        document = {
            "uri": uri,
            "languageId": document_language(language_id, uri),
            "version": version,
            "text": text,
        }
        await session.connection.notify("textDocument/didOpen", {"textDocument": document})

    def _read_document(self, sandbox_id: str, path: str) -> str:
        root = confined.Root.open(str(self.manager.host.sandbox_dir(sandbox_id) / "rootfs"))
        try:
            with confined.mapped(path):
                fd = root.open_regular(path, os.O_RDONLY)
                try:
                    data = os.read(fd, DOCUMENT_MAX_BYTES + 1)
                    while len(data) <= DOCUMENT_MAX_BYTES and (more := os.read(fd, 1 << 20)):
                        data += more
                finally:
                    os.close(fd)
        finally:
            root.close()
        if len(data) > DOCUMENT_MAX_BYTES:
            raise BadRequestError(f"{path}: larger than {DOCUMENT_MAX_BYTES >> 20} MiB; send its text")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError(f"{path}: not a UTF-8 text file") from None

    async def did_close(
        self, org_id: str, sandbox_id: str, language_id: str, path_to_project: str, uri: str
    ) -> None:
        session = await self.session(org_id, sandbox_id, language_id, path_to_project)
        await session.connection.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    async def call(
        self, org_id: str, sandbox_id: str, language_id: str, path_to_project: str, method: str, params: Any
    ) -> dict[str, Any]:
        """A request whose answer goes back whole (the JSON-RPC envelope)."""
        session = await self.session(org_id, sandbox_id, language_id, path_to_project)
        return await session.connection.request(method, params, timeout_s=REQUEST_TIMEOUT_S)
