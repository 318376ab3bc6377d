"""The entry point: one configuration, one transport, and the clients built on it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx

from atoll._exceptions import InvalidArgument
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.process import AsyncProcessClient
from atoll.sdk._async.sandbox import AsyncSandbox
from atoll.sdk._async.sandboxes import AsyncSandboxesClient
from atoll.sdk._async.snapshots import AsyncSnapshotsClient
from atoll.sdk._async.templates import AsyncTemplatesClient
from atoll.sdk._config import ClientConfig
from atoll.sdk.models import SandboxData, SandboxStatus


class AsyncClient:
    """The entry point: ``client.sandboxes`` hands out sandbox handles. Close it, or use it as a
    context manager (in the async flavour, ``async with`` and ``await`` every call).

    Settings come from the arguments, else ``ATOLL_*`` environment variables, else defaults (see
    ``ClientConfig``); pass either ``config`` or individual settings. ``http_client`` lets the
    caller supply (and keep owning) the underlying httpx client: proxies, TLS, tests.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        sandbox_domain: str | None = None,
        sandbox_scheme: str | None = None,
        timeout: float | None = None,
        config: ClientConfig | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if config is None:
            config = ClientConfig(
                api_key=api_key,
                base_url=base_url,
                sandbox_domain=sandbox_domain,
                sandbox_scheme=sandbox_scheme,
                timeout=timeout,
            )
        elif any(v is not None for v in (api_key, base_url, sandbox_domain, sandbox_scheme, timeout)):
            # Silently preferring one of the two would hide a mistake either way.
            raise InvalidArgument("config", "pass either config= or individual settings, not both")
        self._config = config
        self._transport = AsyncTransport(
            config.api_key, config.base_url, timeout=config.timeout, http_client=http_client
        )
        self._process = AsyncProcessClient(self._transport)
        self.sandboxes: AsyncSandboxesClient[AsyncSandbox] = AsyncSandboxesClient(
            self._transport,
            sandbox_domain=config.sandbox_domain,
            sandbox_factory=self._make_sandbox,
            # not set: the scheme the server announces (asked once, when first needed)
            sandbox_scheme=config.sandbox_scheme if config.sandbox_scheme_given else None,
        )
        self.templates = AsyncTemplatesClient(self._transport)

        self.snapshots: AsyncSnapshotsClient[AsyncSandbox] = AsyncSnapshotsClient(
            self._transport, sandbox_factory=self._make_sandbox
        )

    def _make_sandbox(self, data: SandboxData | SandboxStatus) -> AsyncSandbox:
        return AsyncSandbox(
            data,
            sandboxes=self.sandboxes,
            process=self._process,
            transport=self._transport,
            snapshots=self.snapshots,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config!r})"

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def transport(self) -> AsyncTransport:
        return self._transport

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
