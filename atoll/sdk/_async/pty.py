"""``sandbox.pty``: interactive terminals in one sandbox (wire-protocol §9).

Sessions are managed by REST; ``connect`` opens the session's WebSocket, which carries raw
terminal bytes both ways. A session keeps running between connections (output produced while
nobody is connected is replayed to the next one) until it is deleted, its shell exits, or the
sandbox ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._files import check_path
from atoll.sdk._pty import PtySession, check_session_id, check_size, session_path, websocket_url
from atoll.sdk._pty_connection import AsyncPtyConnection, aconnect
from atoll.sdk._validation import check_env_vars, sandbox_path
from atoll.sdk.models import SandboxRef, json_object

_Sessions: TypeAlias = "list[PtySession]"


class AsyncPty:
    """The terminals of one sandbox."""

    def __init__(self, transport: AsyncTransport, sandbox: SandboxRef) -> None:
        self._transport = transport
        self._sandbox = sandbox

    def _path(self, suffix: str = "") -> str:
        return sandbox_path(self._sandbox, suffix or "/pty")

    async def create(
        self,
        *,
        session_id: str | None = None,
        cols: int | None = None,
        rows: int | None = None,
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        lazy_start: bool | None = None,
        http_timeout: float | None = None,
    ) -> PtySession:
        """Start a shell on a new terminal (``lazy_start``: on the first connection instead)."""
        body: dict[str, Any] = {}
        if session_id is not None:
            body["id"] = check_session_id(session_id)
        if cols is not None:
            body["cols"] = check_size("cols", cols)
        if rows is not None:
            body["rows"] = check_size("rows", rows)
        if cwd is not None:
            body["cwd"] = check_path("cwd", cwd)
        if envs is not None:
            body["envs"] = check_env_vars("envs", envs)
        if lazy_start is not None:
            body["lazy_start"] = bool(lazy_start)
        response = await self._transport.request(
            "POST", self._path(), json=body, expected_status=201, timeout=http_timeout
        )
        return PtySession.from_dict(json_object(response.content))

    async def list(self, http_timeout: float | None = None) -> _Sessions:
        response = await self._transport.request("GET", self._path(), timeout=http_timeout)
        found = json_object(response.content).get("items")
        return [PtySession.from_dict(item) for item in found or [] if isinstance(item, Mapping)]

    async def get(self, session_id: str, http_timeout: float | None = None) -> PtySession:
        response = await self._transport.request(
            "GET", self._path(session_path(session_id)), timeout=http_timeout
        )
        return PtySession.from_dict(json_object(response.content))

    async def resize(
        self, session_id: str, *, cols: int, rows: int, http_timeout: float | None = None
    ) -> PtySession:
        body = {"cols": check_size("cols", cols), "rows": check_size("rows", rows)}
        response = await self._transport.request(
            "POST", self._path(session_path(session_id, "/resize")), json=body, timeout=http_timeout
        )
        return PtySession.from_dict(json_object(response.content))

    async def delete(self, session_id: str, http_timeout: float | None = None) -> None:
        """End the session's shell (and everything it started) and forget the session."""
        await self._transport.request(
            "DELETE", self._path(session_path(session_id)), expected_status=204, timeout=http_timeout
        )

    def websocket_url(self, session_id: str) -> str:
        return websocket_url(self._transport.base_url + self._path(session_path(session_id, "/connect")))

    async def connect(self, session_id: str, http_timeout: float | None = None) -> AsyncPtyConnection:
        """Open the session's terminal: ``send`` keystrokes, ``recv`` output (b"" once it ended)."""
        timeout = http_timeout if http_timeout is not None else self._transport.timeout
        return await aconnect(self.websocket_url(session_id), self._transport.auth_headers(), timeout)
