"""Background processes and streamed output (``spec/processes.md``): the server's side.

The processes and their output live in the sandbox's agent (``agent.c``): it is their parent (so
they outlive the request and a checkpoint), and it keeps each one's output in a bounded ring
(``agent_processes``). The server keeps nothing per process. A stream is one connection to the
agent, asking for the events after ``since`` and following; each event is relayed as an SSE
frame as soon as it arrives, and the next is read only once the client took this one, so a slow
reader holds up its own agent connection (the ring drops its oldest events meanwhile, and says
so with a ``truncated`` event) and never grows the server's memory.

Before a checkpoint the server ends the event streams of that sandbox (a checkpoint cannot carry
a connection that leads out of it); clients reconnect ``since`` their last seq, which resumes the
sandbox. A foreground ``execute/stream`` instead keeps its sandbox from being checkpointed while
it runs (it is paused by freezing), as a plain ``execute`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from atoll._exceptions import (
    AgentProtocolError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    SandboxFailure,
    ServerError,
)
from atoll.runtime import agent, agent_processes, gvisor_exec
from atoll.runtime.agent_processes import AgentLink, ProcessInfo, StartRequest
from atoll.runtime.oci import OCIBackend
from atoll.server.errors import http_error
from atoll.server.manager import SandboxManager
from atoll.server.process_frames import EventEncoder, FrameEncoder
from atoll.store.models import SandboxRow

log = logging.getLogger("atoll.processes")
RING_BYTES = 8 << 20  # each process's output ring, in the agent (oldest events dropped past it)
SIGNALS = {
    name: int(getattr(signal, name))
    for name in ("SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
}
KEEPALIVE_S = 15.0  # an SSE comment on an idle stream, within every client's read timeout
_COMMAND_IN_META_CHARS = 8000  # the description the agent keeps is bounded (agent.c MAX_META)
_ABORT_SETTLE_S = 0.3  # for the agent to see its stream connections end before a checkpoint


def _iso(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


def describe(info: ProcessInfo) -> dict[str, Any]:
    """The wire form of a process; its description comes back from the sandbox: checked."""
    try:
        meta = json.loads(info.meta) if info.meta else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) else None

    return {
        "pid": info.pid,
        "command": text("command") or "",
        "cwd": text("cwd"),
        "tag": text("tag"),
        "started_at": _iso(info.started_ms),
        "running": info.running,
        "exit_code": info.exit_code,
        "ended_at": _iso(info.ended_ms),
    }


class ProcessService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self._streams: dict[str, set[AgentLink]] = {}  # open event streams, per sandbox
        self._foreground: dict[str, int] = {}  # running execute/stream commands, per sandbox
        manager.host.checkpoint_vetoes.append(lambda sandbox_id: bool(self._foreground.get(sandbox_id)))
        manager.host.before_checkpoint.append(self.end_streams)

    # connections --------------------------------------------------------------------------
    async def _running(self, org: str, sandbox_id: str) -> SandboxRow:
        return await self.manager.ensure_running(await self.manager.get(org, sandbox_id))

    async def _link(self, row: SandboxRow) -> AgentLink:
        backend = self.manager.host.backend_for(row)
        executor = getattr(backend, "executor", None)
        try:
            if isinstance(executor, gvisor_exec.Executor):
                sock = await executor.connect_agent(row.id)
                return AgentLink(sock, pace=gvisor_exec.OUTPUT_PACE)
        except SandboxFailure as exc:
            raise http_error(exc) from None
        init_pid = await backend._init_pid(row.id) if isinstance(backend, OCIBackend) else None
        found = agent._connect_fd(init_pid) if init_pid is not None else None
        if found is None:
            raise ConflictError("the sandbox's agent does not answer; background processes need a sandbox "
                                "started by this version of Atoll")  # fmt: skip
        return AgentLink(found)

    @contextlib.asynccontextmanager
    async def _request(self, row: SandboxRow) -> AsyncIterator[AgentLink]:
        link = await self._link(row)
        try:
            async with self._errors():
                yield link
        finally:
            link.close()

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """The agent's answers as API errors."""
        try:
            yield
        except SandboxFailure as exc:  # typed by the runtime; errors.py picks the status
            raise http_error(exc) from None
        except (ConnectionError, TimeoutError) as exc:
            raise ServerError(f"the sandbox's agent failed the request: {exc}") from None

    # operations ---------------------------------------------------------------------------
    async def start(
        self,
        org: str,
        sandbox_id: str,
        *,
        command: str,
        cwd: str | None,
        envs: dict[str, str],
        timeout_s: int,
        stdin: bool,
        tag: str | None,
        foreground: bool = False,
    ) -> dict[str, Any]:
        row = await self._running(org, sandbox_id)
        request = self._request_for(row, command=command, cwd=cwd, envs=envs, timeout_s=timeout_s,
                                    stdin=stdin, tag=tag, foreground=foreground)  # fmt: skip
        async with self._request(row) as link:
            pid = await agent_processes.start(link, request)
        started = dt.datetime.now(dt.UTC).isoformat()
        return {
            "pid": pid,
            "command": command,
            "cwd": request.cwd,
            "tag": tag,
            "started_at": started,
            "running": True,
        }

    def _request_for(
        self,
        row: SandboxRow,
        *,
        command: str,
        cwd: str | None,
        envs: dict[str, str],
        timeout_s: int,
        stdin: bool,
        tag: str | None,
        foreground: bool,
    ) -> StartRequest:
        template = self.manager.template_for(row)
        cwd = cwd or template.workdir
        meta: dict[str, object] = {"command": command[:_COMMAND_IN_META_CHARS], "cwd": cwd, "tag": tag}
        if foreground:
            meta["foreground"] = True
        return StartRequest(
            argv=("/bin/sh", "-c", command),
            env={**template.sandbox_env(), **row.env_vars, **envs},
            cwd=cwd,
            stdin=stdin,
            timeout_s=timeout_s,
            meta=json.dumps(meta).encode(),
            ring_bytes=RING_BYTES,
            hold=foreground,
        )

    async def list(self, org: str, sandbox_id: str) -> list[dict[str, Any]]:
        row = await self._running(org, sandbox_id)
        async with self._request(row) as link:
            found = await agent_processes.list_processes(link)
        return [describe(info) for info in sorted(found, key=lambda i: (i.started_ms, i.pid))]

    async def get(self, org: str, sandbox_id: str, pid: int) -> dict[str, Any]:
        for item in await self.list(org, sandbox_id):
            if item["pid"] == pid:
                return item
        raise NotFoundError("process not found")

    async def send_stdin(self, org: str, sandbox_id: str, pid: int, data: bytes, *, eof: bool) -> None:
        row = await self._running(org, sandbox_id)
        async with self._request(row) as link:
            await agent_processes.send_stdin(link, pid, data, eof=eof)

    async def signal(self, org: str, sandbox_id: str, pid: int, name: str) -> None:
        if name not in SIGNALS:
            raise BadRequestError(
                "invalid signal",
                errors=[{"field": "signal", "error": f"one of {', '.join(sorted(SIGNALS))}"}],
            )
        row = await self._running(org, sandbox_id)
        async with self._request(row) as link:
            await agent_processes.send_signal(link, pid, SIGNALS[name])

    async def open_events(
        self,
        org: str,
        sandbox_id: str,
        pid: int,
        since: int,
        *,
        binary: bool,
        follow: bool = True,
        frames: bool = False,
    ) -> AsyncIterator[bytes]:
        """The SSE body of ``pid``'s events after ``since`` (``frames``: the framed binary form,
        ``process_frames``); errors (404) raise before it starts."""
        row = await self._running(org, sandbox_id)
        link = await self._link(row)
        try:
            async with self._errors():
                await agent_processes.open_events(link, pid, since, follow=follow)
        except BaseException:
            link.close()
            raise
        return self._relay(row.id, link, FrameEncoder() if frames else EventEncoder(binary=binary))

    async def _relay(
        self, sandbox_id: str, link: AgentLink, encoder: EventEncoder | FrameEncoder
    ) -> AsyncIterator[bytes]:
        self._streams.setdefault(sandbox_id, set()).add(link)
        try:
            async for event in agent_processes.events(link, keepalive_s=KEEPALIVE_S):
                yield encoder.encode(event)
        except AgentProtocolError as exc:
            log.warning("event stream of sandbox %s ended: %s", sandbox_id, exc)
        finally:
            self._forget(sandbox_id, link)
            link.close()

    def _forget(self, sandbox_id: str, link: AgentLink) -> None:
        links = self._streams.get(sandbox_id)
        if links is not None:
            links.discard(link)
            if not links:
                del self._streams[sandbox_id]

    async def execute_stream(
        self,
        org: str,
        sandbox_id: str,
        *,
        command: str,
        cwd: str | None,
        envs: dict[str, str],
        timeout_s: int,
        frames: bool = False,
    ) -> AsyncIterator[bytes]:
        """A foreground command's events (``frames``: the framed binary form); it is killed when
        the client goes before its end."""
        self._foreground[sandbox_id] = self._foreground.get(sandbox_id, 0) + 1
        try:
            row = await self._running(org, sandbox_id)
            request = self._request_for(row, command=command, cwd=cwd, envs=envs, timeout_s=timeout_s,
                                        stdin=False, tag=None, foreground=True)  # fmt: skip
            link = await self._link(row)
            try:  # one connection: the start, then its events (agent.c, start flag 4)
                async with self._errors():
                    pid = await agent_processes.start(link, request, follow=True)
            except BaseException:
                link.close()
                raise
        except BaseException:
            self._release_foreground(sandbox_id)
            raise
        encoder = FrameEncoder() if frames else EventEncoder(binary=False)
        body = self._relay(row.id, link, encoder)
        return self._follow_foreground(org, sandbox_id, pid, body, encoder)

    async def _follow_foreground(
        self,
        org: str,
        sandbox_id: str,
        pid: int,
        body: AsyncIterator[bytes],
        encoder: EventEncoder | FrameEncoder,
    ) -> AsyncIterator[bytes]:
        try:
            async for frame in body:
                yield frame
        finally:
            self._release_foreground(sandbox_id)
            if not encoder.ended:  # the client left (or the stream broke): the command goes too
                task = asyncio.ensure_future(self._kill_quietly(org, sandbox_id, pid))
                _background.add(task)
                task.add_done_callback(_background.discard)

    def _release_foreground(self, sandbox_id: str) -> None:
        self._foreground[sandbox_id] -= 1
        if not self._foreground[sandbox_id]:
            del self._foreground[sandbox_id]

    async def _kill_quietly(self, org: str, sandbox_id: str, pid: int) -> None:
        with contextlib.suppress(Exception):
            await self.signal(org, sandbox_id, pid, "SIGKILL")

    async def end_streams(self, sandbox_id: str) -> None:
        """Before a checkpoint: end the sandbox's event streams (clients reconnect with since)."""
        links = list(self._streams.get(sandbox_id, ()))
        for link in links:
            link.abort()
        if links:
            await asyncio.sleep(_ABORT_SETTLE_S)


_background: set[asyncio.Task[None]] = set()
