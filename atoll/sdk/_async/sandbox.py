"""The sandbox handle users hold: the latest data plus the operations bound to that sandbox."""

from __future__ import annotations

import datetime as dt
from types import TracebackType
from typing import Any, Self

from atoll._exceptions import NotFoundError
from atoll.sdk._async import observe
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.code_interpreter import AsyncCodeInterpreter
from atoll.sdk._async.desktop import AsyncDesktop
from atoll.sdk._async.filesystem import AsyncFilesystem
from atoll.sdk._async.git import AsyncGit
from atoll.sdk._async.lsp import AsyncLsp
from atoll.sdk._async.process import AsyncProcessClient, AsyncSandboxProcess
from atoll.sdk._async.pty import AsyncPty
from atoll.sdk._async.sandboxes import AsyncSandboxesClient
from atoll.sdk._async.snapshots import AsyncSnapshotsClient
from atoll.sdk._async.ssh import AsyncSsh
from atoll.sdk._observe_models import MetricsSample
from atoll.sdk.models import SandboxData, SandboxState, SandboxStatus, Snapshot


class AsyncSandbox:
    """A sandbox bound to its client: ``sandbox.process.execute(...)``, ``sandbox.pause()``, ...

    Attributes not defined here are read from the latest data (``SandboxData`` after create,
    pause, stop and start; ``SandboxStatus`` after ``refresh``, which has no ``network_policy``).
    Used as a context manager, the sandbox is deleted on exit.
    """

    def __init__(
        self,
        data: SandboxData | SandboxStatus,
        *,
        sandboxes: AsyncSandboxesClient[AsyncSandbox],
        process: AsyncProcessClient,
        transport: AsyncTransport | None = None,
        snapshots: AsyncSnapshotsClient[AsyncSandbox] | None = None,
    ) -> None:
        self._data = data
        self._sandboxes = sandboxes
        self._snapshots = snapshots
        self.process = AsyncSandboxProcess(process, self)
        transport = transport if transport is not None else sandboxes._transport
        self._transport = transport
        self.filesystem = AsyncFilesystem(transport, self)
        self.pty = AsyncPty(transport, self)
        self.code_interpreter = AsyncCodeInterpreter(transport, self)
        self.desktop = AsyncDesktop(transport, self)
        self.git = AsyncGit(transport, self)
        self.ssh = AsyncSsh(transport, self)
        self.lsp = AsyncLsp(transport, self)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally; never forward private names, so a
        # half-built object (copy, pickle) cannot recurse into itself.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._data, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={str(self.state)!r})"

    @property
    def data(self) -> SandboxData | SandboxStatus:
        return self._data

    @property
    def id(self) -> str:
        return self._data.id

    @property
    def state(self) -> SandboxState | str:
        return self._data.state

    # Typed views of the fields both data classes share, so type checkers see more than ``Any``.
    @property
    def template_id(self) -> str:
        return self._data.template_id

    @property
    def vcpu(self) -> int:
        return self._data.vcpu

    @property
    def memory(self) -> int:
        return self._data.memory

    @property
    def disk(self) -> int:
        return self._data.disk

    @property
    def timeout(self) -> int:
        return self._data.timeout

    @property
    def auto_pause(self) -> bool:
        return self._data.auto_pause

    @property
    def created_at(self) -> str:
        return self._data.created_at

    @property
    def mounts(self) -> list[dict[str, Any]] | None:
        return self._data.mounts

    def _take(self, latest: AsyncSandbox) -> Self:
        self._data = latest._data
        return self

    async def refresh(self, http_timeout: float | None = None) -> Self:
        """Fetch the latest metadata into this handle."""
        return self._take(await self._sandboxes.get(self, http_timeout=http_timeout))

    async def pause(self, http_timeout: float | None = None) -> Self:
        return self._take(await self._sandboxes.pause(self, http_timeout=http_timeout))

    async def stop(self, http_timeout: float | None = None) -> Self:
        return self._take(await self._sandboxes.stop(self, http_timeout=http_timeout))

    async def start(self, http_timeout: float | None = None) -> Self:
        return self._take(await self._sandboxes.start(self, http_timeout=http_timeout))

    async def delete(self, http_timeout: float | None = None) -> None:
        await self._sandboxes.delete(self, http_timeout=http_timeout)

    async def create_snapshot(
        self,
        *,
        name: str | None = None,
        kill_sandbox_after: bool = False,
        http_timeout: float | None = None,
    ) -> Snapshot:
        """Checkpoint this sandbox's memory and disk as a reusable, restorable snapshot."""
        if self._snapshots is None:
            raise TypeError("this sandbox handle was made without a snapshots client")
        return await self._snapshots.create(
            self, name=name, kill_sandbox_after=kill_sandbox_after, http_timeout=http_timeout
        )

    async def metrics(
        self, *, since: dt.datetime | str | None = None, http_timeout: float | None = None
    ) -> list[MetricsSample]:
        """The resource samples the server kept for this sandbox (``spec/processes.md``)."""
        return await observe.metrics(self._transport, self, since=since, http_timeout=http_timeout)

    def invoke_url(self, path: str = "/", *, port: int | None = None) -> str:
        return self._sandboxes.invoke_url(self, path, port=port)

    def websocket_url(self, path: str = "/", *, port: int | None = None) -> str:
        return self._sandboxes.websocket_url(self, path, port=port)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.delete()
        except NotFoundError:
            pass  # already gone (deleted inside the block, or timed out): the goal is met
