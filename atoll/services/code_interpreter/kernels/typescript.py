"""TypeScript/JavaScript contexts: one Node.js process running ``ts_runner.js`` per context.

Requests go to the runner's stdin as JSON lines; its events come back as JSON lines on a pipe of
their own (``ATOLL_EVENT_FD``), so the user's writes to fd 1/2 (child processes) cannot corrupt
them: those are forwarded as stdout/stderr of the running execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from ..config import INTERRUPT_GRACE_S
from ..outputs import Execution, StreamName
from .base import RESTART_NEXT, STATE_LOST, Language

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
_POLL_S = 0.2
_EVENT_LINE_LIMIT = 16 << 20  # the runner cuts one event's text at 1 Mi characters
_DIED = "died"
_DRAIN_TURNS = 5


class TypeScriptKernel:
    language: Language = "typescript"

    def __init__(self, kernel_id: str, *, cwd: Path, node: str, runner: Path) -> None:
        self._id = kernel_id
        self._cwd = cwd
        self._node = node
        self._runner = runner
        self._proc: asyncio.subprocess.Process | None = None
        self._events: asyncio.StreamReader | None = None
        self._events_transport: asyncio.BaseTransport | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None
        self._current: tuple[str, Execution, asyncio.Future[str]] | None = None
        self._restarted = False
        self._events_closed = False  # EOF on the event pipe: the runner is gone (maybe not reaped yet)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, ATOLL_EVENT_FD=str(write_fd))
        env.pop("PORT", None)
        try:
            proc = await asyncio.create_subprocess_exec(
                self._node,
                str(self._runner),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._cwd,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group: a kill takes its children too
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader(limit=_EVENT_LINE_LIMIT)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self._proc, self._events, self._events_transport = proc, reader, transport
        self._events_closed = False
        self._ready = loop.create_future()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump_events(reader)),
            asyncio.create_task(self._pump_fd(proc.stdout, "stdout")),
            asyncio.create_task(self._pump_fd(proc.stderr, "stderr")),
        ]
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _START_TIMEOUT_S)
        except BaseException:
            await self.shutdown()
            raise

    async def shutdown(self) -> None:
        proc, self._proc = self._proc, None
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pumps = []
        if self._events_transport is not None:
            self._events_transport.close()
            self._events_transport = None
        if self._current is not None and not self._current[2].done():
            self._current[2].set_result(_DIED)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self._events_closed

    async def _restart(self) -> None:
        await self.shutdown()
        await self.start()
        self._restarted = True

    async def execute(self, code: str, out: Execution, *, env_vars: dict[str, str], timeout_s: float) -> None:
        if not self._alive():
            await self._restart()
        if self._restarted:
            self._restarted = False
            out.stream("stderr", f"[{STATE_LOST}]\n")
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        req_id = secrets.token_hex(8)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._current = (req_id, out, done)
        request = {"id": req_id, "code": code, "timeout_ms": max(1, round(timeout_s * 1000)), "env": env_vars}
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            await self._wait(done, out, timeout_s)
        except (BrokenPipeError, ConnectionResetError):
            out.fail("KernelDied", f"the Node.js process died; {RESTART_NEXT}", "")
        finally:
            self._current = None

    async def _wait(self, done: asyncio.Future[str], out: Execution, timeout_s: float) -> None:
        # The runner enforces timeout_ms itself; this deadline only catches a runner that stopped
        # answering (e.g. an endless loop after an await), which only a kill can end.
        deadline = time.monotonic() + timeout_s + INTERRUPT_GRACE_S
        interrupted = False
        while not done.done():
            if out.cancelled.is_set() and not interrupted and self._proc is not None:
                interrupted = True
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGINT)
                deadline = min(deadline, time.monotonic() + INTERRUPT_GRACE_S)
            if time.monotonic() >= deadline:
                await self.shutdown()  # the next call starts a fresh process
                value = f"execution exceeded the timeout of {round(timeout_s * 1000)} ms; {STATE_LOST}"
                if interrupted:
                    out.fail("KeyboardInterrupt", f"execution interrupted; {STATE_LOST}", "")
                else:
                    out.fail("TimeoutError", value, f"TimeoutError: {value}")
                return
            await asyncio.wait({done}, timeout=_POLL_S)
        # Output of child processes (their fd 1/2 are the runner's) written before the cell ended
        # is already in the pipes: a few loop turns let the fd pumps hand it to this cell.
        for _ in range(_DRAIN_TURNS):
            await asyncio.sleep(0)
        if done.result() == _DIED:
            out.fail("KernelDied", f"the Node.js process died; {RESTART_NEXT}", "")

    async def _pump_events(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("ts runner %s: bad event line", self._id)
                    continue
                self._on_event(event)
        except (ValueError, asyncio.LimitOverrunError):
            log.exception("ts runner %s: event stream broken", self._id)
        finally:
            # EOF: the process is gone (or its event pipe is); a waiting execution learns it here.
            self._events_closed = True
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(RuntimeError("the Node.js runner exited before it was ready"))
            if self._current is not None and not self._current[2].done():
                self._current[2].set_result(_DIED)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        current = self._current
        if current is None:
            return  # output of a timer after its cell ended, with no cell running: dropped
        req_id, out, done = current
        if kind in ("stdout", "stderr"):
            # a background timer's output lands in whichever cell is running, as in a notebook
            out.stream("stdout" if kind == "stdout" else "stderr", str(event.get("data", "")))
            return
        if event.get("id") != req_id:
            return
        if kind == "result":
            bundle: dict[str, Any] = {"text/plain": str(event.get("text", ""))}
            if isinstance(event.get("json"), dict):
                bundle["application/json"] = event["json"]
            out.display(bundle, primary=True)
        elif kind == "error":
            name, value = str(event.get("name", "Error")), str(event.get("value", ""))
            out.fail(name, value, str(event.get("traceback", "")))
        elif kind == "done":
            count = event.get("execution_count")
            out.execution_count = count if isinstance(count, int) else None
            if not done.done():
                done.set_result("done")

    async def _pump_fd(self, stream: asyncio.StreamReader, name: StreamName) -> None:
        while chunk := await stream.read(65536):
            if self._current is not None:
                out = self._current[1]
                out.stream(name, chunk.decode("utf-8", "replace"))
            else:
                log.debug("ts runner %s %s (no cell running): %r", self._id, name, chunk[:200])
