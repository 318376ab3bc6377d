"""One-shot commands inside a sandbox (``/bin/sh -c``), returning exit code and output at once."""

from __future__ import annotations

from collections.abc import Mapping

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._validation import process_body, sandbox_path
from atoll.sdk.models import ProcessResult, SandboxRef, json_object

# Time for the answer to travel back after the command's own time limit ran out.
PROCESS_HTTP_MARGIN_S = 10.0


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
    ) -> ProcessResult:
        """Run ``command`` and wait for it. ``timeout`` (seconds) is enforced by the server
        (default 30 s); ``env`` applies to this process only."""
        body = process_body(command=command, cwd=cwd, env=env, timeout=timeout)
        if http_timeout is None and timeout is not None:
            # The HTTP call must outlive the command, or a slow command looks like a network fault.
            http_timeout = max(self._transport.timeout, timeout + PROCESS_HTTP_MARGIN_S)
        response = await self._transport.request(
            "POST", sandbox_path(sandbox, "/process/execute"), json=body, timeout=http_timeout
        )
        return ProcessResult.from_dict(json_object(response.content))


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
    ) -> ProcessResult:
        return await self._client.execute(
            self._sandbox, command=command, cwd=cwd, env=env, timeout=timeout, http_timeout=http_timeout
        )
