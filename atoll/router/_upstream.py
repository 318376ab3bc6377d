"""The sandbox side of a proxied connection: a TCP connection to one port of one sandbox.

It only reports what happens (bytes, EOF, loss, back-pressure) to the client connection that
owns it; that side decides. Connecting fails fast and clearly: a refused port (the sandbox's
kernel answers RST) or a timeout becomes a 502 naming the port; a node's router (the sandbox
runs on another node of the cluster) that does not answer is ``NodeUnreachable`` naming it."""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from atoll._exceptions import NodeUnreachable
from atoll.router._framing import ResponseFraming, ResponseSink
from atoll.router._lookup import Destination
from atoll.router._responses import BadGateway

WRITE_HIGH_WATER = 512 * 1024


class Peer(ResponseSink, Protocol):
    def upstream_data(self, upstream: UpstreamConnection, data: bytes) -> None: ...
    def upstream_eof(self, upstream: UpstreamConnection) -> bool: ...
    def upstream_lost(self, upstream: UpstreamConnection) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, peer: Peer, dest: Destination) -> None:
        self.peer = peer
        self.dest = dest
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.framing = ResponseFraming(peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.peer.upstream_data(self, data)

    def eof_received(self) -> bool:
        self.reusable = False
        return self.peer.upstream_eof(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        self.peer.upstream_lost(self)

    def pause_writing(self) -> None:
        self.peer.upstream_paused(True)

    def resume_writing(self) -> None:
        self.peer.upstream_paused(False)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


async def open_upstream(peer: Peer, dest: Destination, timeout: float) -> UpstreamConnection:
    """Connect to ``dest``; ``BadGateway`` when nothing answers there (``NodeUnreachable`` when
    it is the router of the node that runs the sandbox)."""
    loop = asyncio.get_running_loop()
    where = f"port {dest.port} in sandbox {dest.sandbox_id}"
    if dest.hop is not None:
        node = f"node {dest.hop.node_id} (router at {dest.host}:{dest.port})"
        where = f"{node}, which runs sandbox {dest.sandbox_id},"
    try:
        async with asyncio.timeout(timeout):
            _, upstream = await loop.create_connection(
                lambda: UpstreamConnection(peer, dest), dest.host, dest.port
            )
    except (OSError, TimeoutError) as exc:
        raise _unreachable(where, dest, exc, timeout) from None
    return upstream


def _unreachable(where: str, dest: Destination, exc: Exception, timeout: float) -> Exception:
    if dest.hop is not None:
        why = "timed out" if isinstance(exc, TimeoutError) else str(getattr(exc, "strerror", None) or exc)
        return NodeUnreachable(f"{where} did not answer: {why}")
    if isinstance(exc, ConnectionRefusedError):
        return BadGateway(f"nothing is listening on {where}")
    if isinstance(exc, TimeoutError):
        return BadGateway(f"{where} did not accept a connection within {timeout:g}s")
    assert isinstance(exc, OSError)
    return BadGateway(f"cannot reach {where}: {exc.strerror or exc}")
