"""The router's listeners and lifecycle, and the one place its pieces are put together.

It runs in the control plane's process and event loop (started and stopped by the API's
lifespan), so it shares the sandbox lifecycle (passed in as a ``SandboxLifecycle``, the few
members the router declares it needs): a request to a paused sandbox resumes it, and a state
change reaches the router's cache at once. In a cluster it is also given where sandboxes run
(a ``SandboxHomes``): another node's sandbox is reached through that node's router (``_hop``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from atoll._exceptions import APIError, OperationFailure
from atoll.router._certs import router_certificate
from atoll.router._context import unmapped
from atoll.router._listener import Sniffing
from atoll.router._lookup import Lookup, Row, SandboxHomes, SandboxLifecycle, SandboxLookup
from atoll.router._names import Names
from atoll.router._presigned import PresignedStore
from atoll.router._proxy import ClientConnection, ProxyContext
from atoll.store.observed import ObservedRepository

log = logging.getLogger("atoll.router")
# an address family or address this host lacks (e.g. ::1 with IPv6 disabled) is skipped
_UNAVAILABLE = {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}
SWEEP_DELAY_S = 0.5
BACKLOG = 1024
FIRST_BYTE_TIMEOUT_S = 10.0  # a client that connects and says nothing is closed after this
HANDSHAKE_TIMEOUT_S = 10.0


class RouterSettings(Protocol):
    """The settings the router reads (``atoll.server.settings.Settings`` has them all)."""

    @property
    def sandbox_host(self) -> str: ...
    @property
    def presigned_domain(self) -> str | None: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def router_hosts(self) -> Sequence[str]: ...
    @property
    def router_port(self) -> int: ...
    @property
    def cluster_token(self) -> str | None: ...


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class Router:
    """Listens on ``hosts``:``port`` and proxies every connection (see ``_proxy``): plain HTTP
    always, and HTTPS on the same port when there is an ``ssl_context`` (see ``_listener``)."""

    def __init__(
        self,
        *,
        lookup: Lookup,
        names: Names,
        hosts: Sequence[str],
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 75.0,
        presigned: PresignedStore | None = None,
        is_live: Callable[[str], Awaitable[bool]] | None = None,
        first_byte_timeout_s: float = FIRST_BYTE_TIMEOUT_S,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        cluster_token: str | None = None,
        http_error: Callable[[OperationFailure], APIError] = unmapped,
    ) -> None:
        self.context = ProxyContext(
            lookup=lookup,
            names=names,
            scheme="http",
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            cluster_token=cluster_token,
            http_error=http_error,
        )
        # the same, but X-Forwarded-Proto: https; one set of connections for both
        self.tls_proxy_context = dataclasses.replace(
            self.context, scheme="https", connections=self.context.connections
        )
        self.hosts = tuple(hosts)
        self.port = port
        self.ssl_context = ssl_context
        self.presigned = presigned
        self.is_live = is_live
        self.sniffing = Sniffing(
            plain=lambda: ClientConnection(self.context),
            secure=lambda: ClientConnection(self.tls_proxy_context),
            ssl_context=ssl_context,
            first_byte_timeout_s=first_byte_timeout_s,
            handshake_timeout_s=handshake_timeout_s,
        )
        self._servers: list[asyncio.Server] = []
        self._sweeps: dict[str, asyncio.Task[None]] = {}

    def sandbox_changed(self, sandbox_id: str) -> None:
        """A sandbox changed state: once it settles, cut connections to it if it is gone or
        stopped (its network is gone too, so they would otherwise hang until TCP gives up).
        A paused sandbox keeps them: they work again once it resumes."""
        if self.is_live is not None and sandbox_id not in self._sweeps and self._servers:
            self._sweeps[sandbox_id] = asyncio.get_running_loop().create_task(self._sweep(sandbox_id))

    async def _sweep(self, sandbox_id: str) -> None:
        assert self.is_live is not None
        try:
            await asyncio.sleep(SWEEP_DELAY_S)  # the transition's later writes land first
            self._sweeps.pop(sandbox_id, None)
            if await self.is_live(sandbox_id):
                return
            for connection in list(self.context.connections):
                if connection.upstream is not None and connection.upstream.dest.sandbox_id == sandbox_id:
                    connection.abort()
        except Exception:
            log.exception("router: cutting connections to %s failed", sandbox_id)
        finally:
            self._sweeps.pop(sandbox_id, None)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for server in self._servers
            for sock in server.sockets
        ]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host in self.hosts:
            try:
                # no ssl= here: TLS or not is decided per connection, by its first byte
                server = await loop.create_server(
                    self.sniffing.protocol, host, self.port, reuse_address=True, backlog=BACKLOG
                )
            except OSError as exc:
                if exc.errno in _UNAVAILABLE:
                    log.warning("router: cannot listen on %s:%s (%s); skipped", host, self.port, exc)
                    continue
                await self.stop()
                raise RuntimeError(f"sandbox router cannot listen on {host}:{self.port}: {exc}") from exc
            self._servers.append(server)
        if not self._servers:
            raise RuntimeError(f"sandbox router could not listen on any of {', '.join(self.hosts)}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let responses in progress finish (up to ``timeout``), cut the rest."""
        for server in self._servers:
            server.close()
        self._servers = []
        self.sniffing.close()
        for sweep in self._sweeps.values():
            sweep.cancel()
        self._sweeps.clear()
        connections = self.context.connections
        self.context.all_closed = self.tls_proxy_context.all_closed = all_closed = asyncio.Event()
        for connection in list(connections):
            connection.shutdown()
        if connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await all_closed.wait()
        for connection in list(connections):
            connection.abort()
        connections.clear()


def build_router(
    settings: RouterSettings,
    manager: SandboxLifecycle[Row],
    repo: ObservedRepository,
    *,
    homes: SandboxHomes[Row] | None = None,
    http_error: Callable[[OperationFailure], APIError] = unmapped,
) -> Router:
    """The router as ``settings`` describe it, wired to the sandbox lifecycle and the store, and
    in a cluster to where its sandboxes run (``homes``); ``http_error`` answers typed failures."""
    presigned = PresignedStore(repo.sessions)
    lookup = SandboxLookup(manager, presigned, homes=homes, cluster_token=settings.cluster_token)
    hosts = [settings.sandbox_host, settings.presigned_domain or settings.sandbox_host]
    certificate = router_certificate(settings.data_dir, hosts, settings.tls_cert, settings.tls_key)
    ssl_context = tls_context(certificate.cert, certificate.key)
    router = Router(
        lookup=lookup,
        names=Names(settings.sandbox_host, settings.presigned_domain),
        hosts=settings.router_hosts,
        port=settings.router_port,
        ssl_context=ssl_context,
        presigned=presigned,
        is_live=lookup.is_live,
        cluster_token=settings.cluster_token,
        http_error=http_error,
    )
    repo.subscribe(lookup.forget)
    repo.subscribe(router.sandbox_changed)
    return router
