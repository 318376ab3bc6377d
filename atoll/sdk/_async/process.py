"""Commands inside a sandbox (``/bin/sh -c``): one-shot ``execute`` (optionally streamed to
callbacks), and background processes (``start``/``connect``) whose output the sandbox keeps and
streams as events (``spec/processes.md``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from atoll._exceptions import InvalidArgument, TransportError
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._frames import FRAMES_MEDIA_TYPE, FrameDecoder
from atoll.sdk._process_models import SIGNALS, ProcessEvent, ProcessInfo
from atoll.sdk._sse import SSEDecoder
from atoll.sdk._validation import process_body, sandbox_path
from atoll.sdk.models import ProcessResult, SandboxRef, json_object

# Time for the answer to travel back after the command's own time limit ran out.
PROCESS_HTTP_MARGIN_S = 10.0
# a stream that ends without the process's exit (a pause, a dropped connection) is picked up
# again where it stopped; this many times in a row without a new event, then it is an error
RECONNECTS_WITHOUT_PROGRESS = 3
OutputCallback = Callable[[str], Any]
# the framed binary form of event streams (an Atoll extension; SSE is the spec'd default)
_ACCEPT_FRAMES = {"accept": f"{FRAMES_MEDIA_TYPE}, text/event-stream;q=0.5"}


def _pid(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument("pid", f"must be a positive integer, got {value!r}")
    return value


class AsyncProcessClient:
    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def execute(
        self,
        sandbox: SandboxRef,
        *,
        command: str,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: int | None = None,  # the command's limit, enforced by the server
        http_timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ProcessResult:
        """Run ``command`` and wait for it. ``timeout`` (seconds) is enforced by the server
        (default 30 s); ``env`` applies to this process only. With ``on_stdout``/``on_stderr``
        the output is streamed: each callback gets text chunks as the command writes them."""
        body = process_body(command=command, cwd=cwd, env=env, timeout=timeout)
        if http_timeout is None and timeout is not None:
            # The HTTP call must outlive the command, or a slow command looks like a network fault.
            http_timeout = max(self._transport.timeout, timeout + PROCESS_HTTP_MARGIN_S)
        if on_stdout is not None or on_stderr is not None:
            path = sandbox_path(sandbox, "/process/execute/stream")
            stream = self._events("POST", path, json=body, http_timeout=http_timeout)
            return await _collect(stream, on_stdout, on_stderr)
        response = await self._transport.request(
            "POST", sandbox_path(sandbox, "/process/execute"), json=body, timeout=http_timeout
        )
        return ProcessResult.from_dict(json_object(response.content))

    async def start(
        self,
        sandbox: SandboxRef,
        command: str,
        *,
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: int = 0,  # seconds; 0: no limit
        stdin: bool = False,
        tag: str | None = None,
    ) -> AsyncProcessHandle:
        """Start ``command`` in the background; it outlives this call and this client."""
        body = process_body(command=command, cwd=cwd, env=envs, timeout=None)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidArgument("timeout", f"must be a non-negative number of seconds, got {timeout!r}")
        if tag is not None and not isinstance(tag, str):
            raise InvalidArgument("tag", f"must be a string, got {tag!r}")
        body.update(timeout=timeout, stdin=bool(stdin), tag=tag)
        response = await self._transport.request(
            "POST", sandbox_path(sandbox, "/process/start"), json=body, expected_status=201
        )
        info = ProcessInfo.from_dict(json_object(response.content))
        return AsyncProcessHandle(self, sandbox, info.pid)

    async def list(self, sandbox: SandboxRef) -> list[ProcessInfo]:
        """Running and recently ended background processes."""
        response = await self._transport.request("GET", sandbox_path(sandbox, "/process"))
        items = json_object(response.content).get("items")
        if not isinstance(items, list):
            return []
        return [ProcessInfo.from_dict(item) for item in items if isinstance(item, dict)]

    async def get(self, sandbox: SandboxRef, pid: int) -> ProcessInfo:
        response = await self._transport.request("GET", sandbox_path(sandbox, f"/process/{_pid(pid)}"))
        return ProcessInfo.from_dict(json_object(response.content))

    async def connect(self, sandbox: SandboxRef, pid: int, *, since: int = 0) -> AsyncProcessHandle:
        """A handle on a running or recently ended process (404 when there is none): iterating
        it replays what the sandbox still keeps after ``since`` and goes on live."""
        info = await self.get(sandbox, pid)
        return AsyncProcessHandle(self, sandbox, info.pid, since=since)

    async def send_stdin(self, sandbox: SandboxRef, pid: int, data: str, *, eof: bool = False) -> None:
        if not isinstance(data, str):
            raise InvalidArgument("data", f"must be text, got {type(data).__name__}")
        path = sandbox_path(sandbox, f"/process/{_pid(pid)}/stdin")
        await self._transport.request("POST", path, json={"data": data, "eof": eof}, expected_status=204)

    async def signal(self, sandbox: SandboxRef, pid: int, name: str) -> None:
        if name not in SIGNALS:
            raise InvalidArgument("signal", f"must be one of {', '.join(SIGNALS)}, got {name!r}")
        path = sandbox_path(sandbox, f"/process/{_pid(pid)}/signal")
        await self._transport.request("POST", path, json={"signal": name}, expected_status=204)

    async def kill(self, sandbox: SandboxRef, pid: int) -> None:
        """SIGKILL to the process's whole session."""
        path = sandbox_path(sandbox, f"/process/{_pid(pid)}")
        await self._transport.request("DELETE", path, expected_status=204)

    async def events(
        self, sandbox: SandboxRef, pid: int, *, since: int = 0, follow: bool = True
    ) -> AsyncIterator[ProcessEvent]:
        """One connection's events after ``since`` (it may end before the process does: a
        handle reconnects, this does not); without ``follow``, only what the sandbox kept."""
        path = sandbox_path(sandbox, f"/process/{_pid(pid)}/events")
        params = {"since": since, "follow": "true" if follow else "false"}
        async for event in self._events("GET", path, params=params):
            yield event

    async def _events(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        http_timeout: float | None = None,
    ) -> AsyncIterator[ProcessEvent]:
        """The events of one response: framed binary when the server speaks it (much faster for
        big outputs, ``atoll.sdk._frames``), SSE otherwise (a server without the extension)."""
        async with self._transport.stream(
            method, path, json=json, params=params, headers=_ACCEPT_FRAMES, timeout=http_timeout
        ) as response:
            if response.headers.get("content-type", "").startswith(FRAMES_MEDIA_TYPE):
                frames = FrameDecoder()
                async for chunk in response.aiter_bytes():
                    for event in frames.feed(chunk):
                        yield event
                frames.close()
                return
            decoder = SSEDecoder()
            async for chunk in response.aiter_bytes():
                for payload in decoder.feed(chunk):
                    yield ProcessEvent.from_json(payload)
        for payload in decoder.close():
            yield ProcessEvent.from_json(payload)


async def _collect(
    stream: AsyncIterator[ProcessEvent], on_stdout: OutputCallback | None, on_stderr: OutputCallback | None
) -> ProcessResult:
    out: list[str] = []
    err: list[str] = []
    async for event in stream:
        if event.type == "stdout":
            out.append(event.data)
            if on_stdout is not None:
                on_stdout(event.data)
        elif event.type == "stderr":
            err.append(event.data)
            if on_stderr is not None:
                on_stderr(event.data)
        elif event.type == "exit":
            return ProcessResult(exit_code=event.exit_code or 0, stdout="".join(out), stderr="".join(err))
    raise TransportError("the output stream ended before the process did")


class AsyncProcessHandle:
    """A background process: ``pid``; iterate it for events (it picks a dropped stream up
    where it stopped, ``since`` the last event seen, so nothing is missed or repeated);
    ``wait()`` for its result; ``send_stdin``, ``close_stdin``, ``signal``, ``kill``."""

    def __init__(self, client: AsyncProcessClient, sandbox: SandboxRef, pid: int, *, since: int = 0) -> None:
        self._client = client
        self._sandbox = sandbox
        self.pid = pid
        self.since = since  # the seq of the last event handed out
        self.exit_code: int | None = None

    def __repr__(self) -> str:
        return f"<ProcessHandle pid={self.pid} since={self.since} exit_code={self.exit_code}>"

    async def __aiter__(self) -> AsyncIterator[ProcessEvent]:
        idle = 0
        while self.exit_code is None:
            progressed = False
            async for event in self._client.events(self._sandbox, self.pid, since=self.since):
                if event.seq is not None:
                    if event.seq <= self.since:
                        continue  # never twice
                    self.since = event.seq
                    progressed = True
                if event.type == "exit":
                    self.exit_code = event.exit_code
                yield event
                if event.type == "exit":
                    return
            idle = 0 if progressed else idle + 1
            if idle >= RECONNECTS_WITHOUT_PROGRESS:
                raise TransportError(f"the event stream of process {self.pid} keeps ending early")

    async def wait(
        self, *, on_stdout: OutputCallback | None = None, on_stderr: OutputCallback | None = None
    ) -> ProcessResult:
        """Wait for the end; the result holds the output from here on (all of it for a handle
        from ``start``, or as much as the sandbox kept)."""
        return await _collect(self.__aiter__(), on_stdout, on_stderr)

    async def send_stdin(self, data: str) -> None:
        await self._client.send_stdin(self._sandbox, self.pid, data)

    async def close_stdin(self) -> None:
        await self._client.send_stdin(self._sandbox, self.pid, "", eof=True)

    async def signal(self, name: str) -> None:
        await self._client.signal(self._sandbox, self.pid, name)

    async def kill(self) -> None:
        await self._client.kill(self._sandbox, self.pid)

    async def info(self) -> ProcessInfo:
        return await self._client.get(self._sandbox, self.pid)


class AsyncSandboxProcess:
    """``sandbox.process``: the process client with the sandbox already filled in."""

    def __init__(self, client: AsyncProcessClient, sandbox: SandboxRef) -> None:
        self._client = client
        self._sandbox = sandbox

    async def execute(
        self,
        *,
        command: str,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: int | None = None,  # the command's limit, enforced by the server
        http_timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ProcessResult:
        return await self._client.execute(
            self._sandbox,
            command=command,
            cwd=cwd,
            env=env,
            timeout=timeout,
            http_timeout=http_timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    async def start(
        self,
        command: str,
        *,
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: int = 0,
        stdin: bool = False,
        tag: str | None = None,
    ) -> AsyncProcessHandle:
        return await self._client.start(
            self._sandbox, command, cwd=cwd, envs=envs, timeout=timeout, stdin=stdin, tag=tag
        )

    async def list(self) -> list[ProcessInfo]:
        return await self._client.list(self._sandbox)

    async def get(self, pid: int) -> ProcessInfo:
        return await self._client.get(self._sandbox, pid)

    async def connect(self, pid: int, *, since: int = 0) -> AsyncProcessHandle:
        return await self._client.connect(self._sandbox, pid, since=since)

    async def kill(self, pid: int) -> None:
        await self._client.kill(self._sandbox, pid)

    async def signal(self, pid: int, name: str) -> None:
        await self._client.signal(self._sandbox, pid, name)

    async def send_stdin(self, pid: int, data: str, *, eof: bool = False) -> None:
        await self._client.send_stdin(self._sandbox, pid, data, eof=eof)

    async def logs(self, pid: int, *, since: int = 0) -> AsyncIterator[ProcessEvent]:
        """What the sandbox kept of ``pid``'s events after ``since``, without waiting for more."""
        async for event in self._client.events(self._sandbox, pid, since=since, follow=False):
            yield event
