"""PTY sessions (wire-protocol §9): interactive shells in a sandbox, reached over WebSockets.

A session is created by REST and owns at most one terminal (``atoll.runtime.terminal``), started
at once or, with ``lazy_start``, by the first WebSocket that connects. One pump per terminal
reads its output and hands it to every connected socket in turn; awaiting each send is the flow
control (a terminal nobody reads stops its shell at the kernel's buffer, never fills the server),
and output produced while nobody is connected is kept (up to ``PENDING_MAX``) for the next one.
Sessions live in memory: they end with their sandbox (the manager's teardown hook), when deleted,
and when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from atoll._exceptions import (
    BadRequestError,
    ConflictError,
    FileRequestInvalid,
    NotFoundError,
    SandboxFailure,
)
from atoll._tasks import cancel_and_wait
from atoll.runtime import confined, oci_config, terminal
from atoll.runtime.spec import ExecRequest
from atoll.server.errors import http_error
from atoll.server.manager import SandboxManager
from atoll.store.models import SandboxRow

log = logging.getLogger("atoll.pty")

MAX_SESSIONS_PER_SANDBOX = 16
PENDING_MAX = 1024 * 1024
SEND_TIMEOUT_S = 30.0
# a session nobody is connected to, whose terminal has been silent this long, is ended (a client
# that died without deleting its session must not hold a shell forever)
ABANDONED_AFTER_S = 3600.0
SHELLS = ("/bin/bash", "/bin/sh")


class Socket(Protocol):
    """What a session needs of a connected WebSocket."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(eq=False)
class PtySession:
    id: str
    sandbox_id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    lazy_start: bool
    created_at: str = field(default_factory=_now)
    terminal: terminal.Terminal | None = None
    ended: bool = False
    exit_code: int | None = None
    sockets: list[Socket] = field(default_factory=list)
    pending: bytearray = field(default_factory=bytearray)
    pump: asyncio.Task[None] | None = None
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    activity: float = field(default_factory=time.monotonic)  # last input or output

    @property
    def active(self) -> bool:
        return self.terminal is not None and not self.ended

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cwd": self.cwd,
            "envs": dict(self.envs),
            "cols": self.cols,
            "rows": self.rows,
            "created_at": self.created_at,
            "active": self.active,
            "lazy_start": self.lazy_start,
        }


def _workdir(cwd: str | None, *, base: str) -> str:
    """The session's directory: ``cwd`` (relative to ``base``), or ``base``; a bad one (a NUL
    byte would be cut off on its way into the sandbox, a lone surrogate cannot be encoded) is
    a 400 naming the field."""
    if not cwd:
        return base
    try:
        return confined.normalize(cwd, base=base)
    except FileRequestInvalid as exc:
        raise BadRequestError(
            f"invalid cwd: {exc.message}", errors=[{"field": "cwd", "error": exc.message}]
        ) from None


class PtyManager:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._sessions: dict[str, dict[str, PtySession]] = {}
        manager.host.teardown_hooks.append(self.end_sandbox)
        manager.host.checkpoint_vetoes.append(self.has_live_sessions)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def has_live_sessions(self, sandbox_id: str) -> bool:
        """Terminals live on the host side: a sandbox with a running one can only freeze."""
        return any(not s.ended for s in self._sessions.get(sandbox_id, {}).values())

    # REST ---------------------------------------------------------------------------------
    async def _row(self, org_id: str, sandbox_id: str) -> SandboxRow:
        return await self.manager.ensure_running(await self.manager.get(org_id, sandbox_id))

    async def sessions(self, org_id: str, sandbox_id: str) -> list[PtySession]:
        await self.manager.get(org_id, sandbox_id)
        return list(self._sessions.get(sandbox_id, {}).values())

    async def get(self, org_id: str, sandbox_id: str, session_id: str) -> PtySession:
        await self.manager.get(org_id, sandbox_id)
        session = self._sessions.get(sandbox_id, {}).get(session_id)
        if session is None:
            raise NotFoundError(f"PTY session {session_id!r} not found")
        return session

    async def create(
        self,
        org_id: str,
        sandbox_id: str,
        *,
        session_id: str | None,
        cols: int,
        rows: int,
        cwd: str | None,
        envs: dict[str, str],
        lazy_start: bool,
    ) -> PtySession:
        row = await self._row(org_id, sandbox_id)
        sessions = self._sessions.setdefault(row.id, {})
        session_id = session_id or "pty-" + secrets.token_hex(6)
        if session_id in sessions:
            raise ConflictError(f"PTY session {session_id!r} already exists")
        if len(sessions) >= MAX_SESSIONS_PER_SANDBOX:
            raise ConflictError(f"at most {MAX_SESSIONS_PER_SANDBOX} PTY sessions per sandbox")
        template = self.manager.template_for(row)
        workdir = _workdir(cwd, base=template.workdir or "/")
        session = PtySession(
            id=session_id,
            sandbox_id=row.id,
            cwd=workdir,
            envs=envs,
            cols=cols,
            rows=rows,
            lazy_start=lazy_start,
        )
        sessions[session_id] = session
        if not lazy_start:
            try:
                await self._start(session, row)
            except BaseException:
                sessions.pop(session_id, None)
                raise
        return session

    async def resize(
        self, org_id: str, sandbox_id: str, session_id: str, *, cols: int, rows: int
    ) -> PtySession:
        session = await self.get(org_id, sandbox_id, session_id)
        session.cols, session.rows = cols, rows
        if session.active and session.terminal is not None:
            session.terminal.resize(cols, rows)
        return session

    async def delete(self, org_id: str, sandbox_id: str, session_id: str) -> None:
        session = await self.get(org_id, sandbox_id, session_id)
        self._sessions.get(sandbox_id, {}).pop(session_id, None)
        await self._end(session)

    # terminals ----------------------------------------------------------------------------
    def _shell(self, row: SandboxRow) -> list[str]:
        root = confined.Root.open(str(self.manager.host.sandbox_dir(row.id) / "rootfs"))
        try:
            for shell in SHELLS:
                with contextlib.suppress(OSError, BadRequestError):
                    os.close(root.open_regular(shell, os.O_RDONLY))
                    return [shell]
        finally:
            root.close()
        return [confined.PROTECTED + "/busybox", "sh"]

    async def _start(self, session: PtySession, row: SandboxRow) -> None:
        async with session.starting:
            if session.terminal is not None or session.ended:
                return
            template = self.manager.template_for(row)
            env = {**template.sandbox_env(), "TERM": "xterm-256color", **row.env_vars, **session.envs}
            backend: Any = self.manager.host.backend_for(row)
            shell = await asyncio.to_thread(self._shell, row)
            kill_session = getattr(backend, "kill_terminal_session", None)  # gVisor: in the sentry
            kill_inside = functools.partial(kill_session, row.id) if kill_session is not None else None
            try:
                await _check_cwd(backend, row.id, session.cwd)
                session.terminal = await terminal.open_terminal(
                    [backend.binary, "--root", str(backend.state_root)],
                    row.id,
                    exec_command=getattr(backend, "terminal_argv", None),
                    oom_score_adj=backend.command_oom_score_adj,
                    argv=shell,
                    env=env,
                    cwd=session.cwd,
                    cols=session.cols,
                    rows=session.rows,
                    socket_dir=backend.state_root,
                    kill_inside=kill_inside,
                )
            except SandboxFailure as exc:  # typed by the runtime; errors.py picks the status
                raise http_error(exc, subject="PTY") from None
            finally:
                if reap := getattr(backend, "reap_runtime_orphans", None):
                    reap()
            session.pump = asyncio.create_task(self._pump(session))

    async def _pump(self, session: PtySession) -> None:
        term = session.terminal
        assert term is not None
        try:
            while data := await term.read():
                session.activity = time.monotonic()
                if not session.sockets:
                    session.pending += data
                    if len(session.pending) > PENDING_MAX:
                        del session.pending[: len(session.pending) - PENDING_MAX]
                    continue
                for sock in list(session.sockets):
                    await self._send(session, sock, data)
        except Exception:
            log.exception("PTY session %s/%s failed", session.sandbox_id, session.id)
        finally:
            session.ended = True
            with contextlib.suppress(Exception):
                session.exit_code = await asyncio.wait_for(term.wait(), 10)
            term.close()
            for sock in list(session.sockets):
                with contextlib.suppress(Exception):
                    await sock.close(1000, "session ended")

    async def _send(self, session: PtySession, sock: Socket, data: bytes) -> None:
        try:
            await asyncio.wait_for(sock.send_bytes(data), SEND_TIMEOUT_S)
        except Exception:
            # a client that cannot take output (gone, or too slow) is dropped, not waited for
            if sock in session.sockets:
                session.sockets.remove(sock)
            with contextlib.suppress(Exception):
                await sock.close(1011, "could not deliver terminal output")

    async def ensure_started(self, org_id: str, session: PtySession) -> None:
        """A connection resumes a paused sandbox, and starts a lazy session's shell."""
        row = await self._row(org_id, session.sandbox_id)
        if session.terminal is None:
            await self._start(session, row)

    async def attach(self, session: PtySession, sock: Socket) -> None:
        """Replay what nobody has seen yet, then stream the terminal's output to ``sock``."""
        while session.pending:
            data, session.pending = bytes(session.pending), bytearray()
            await sock.send_bytes(data)
        session.sockets.append(sock)  # no await since the last look at pending: nothing is lost

    def detach(self, session: PtySession, sock: Socket) -> None:
        if sock in session.sockets:
            session.sockets.remove(sock)

    async def write(self, session: PtySession, data: bytes) -> None:
        if session.terminal is not None and not session.ended:
            session.activity = time.monotonic()
            await session.terminal.write(data)

    async def _end(self, session: PtySession) -> None:
        session.ended = True
        if session.terminal is not None:
            with contextlib.suppress(Exception):
                await session.terminal.kill()
        if session.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.pump, 10)
        for sock in list(session.sockets):
            with contextlib.suppress(Exception):
                await sock.close(1000, "session ended")
        session.sockets.clear()

    async def end_sandbox(self, sandbox_id: str) -> None:
        """Teardown hook: every session of the sandbox ends with it."""
        await self._end_all(self._sessions.pop(sandbox_id, {}).values())

    def abandoned(self, now: float) -> list[PtySession]:
        return [
            s
            for by_id in self._sessions.values()
            for s in by_id.values()
            if not s.sockets and now - s.activity > ABANDONED_AFTER_S
        ]

    async def _sweep_forever(self, interval: float = 60.0) -> None:
        while True:
            await asyncio.sleep(interval)
            for session in self.abandoned(time.monotonic()):
                self._sessions.get(session.sandbox_id, {}).pop(session.id, None)
                log.info("ending abandoned PTY session %s/%s", session.sandbox_id, session.id)
                await self._end(session)

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        sessions = [s for by_id in self._sessions.values() for s in by_id.values()]
        self._sessions.clear()
        await self._end_all(sessions)

    async def _end_all(self, sessions: Iterable[PtySession]) -> None:
        await asyncio.gather(*(self._end(s) for s in sessions), return_exceptions=True)


async def _check_cwd(backend: Any, sandbox_id: str, cwd: str) -> None:
    """A runtime tells why a terminal did not start only in prose, and runsc starts one whose cwd
    is a file: so the agent first runs a no-op in ``cwd``, which fails typed (``BadWorkingDirectory``
    with the errno, ``SandboxNotRunning`` ...). One agent round trip, a millisecond or two."""
    probe = ExecRequest(argv=(oci_config.BUSYBOX_PATH, "true"), env={}, cwd=cwd, timeout=10)
    await backend.exec(sandbox_id, probe)
