"""HTTPS and plain HTTP on one port: the first bytes a client sends tell them apart.

A TLS connection starts with a handshake record (content type 22, ``0x16``); no HTTP request
line does. The event loop's own server accepts (so plain HTTP costs what it did before TLS
shared the port) and each new connection starts with a ``Sniffer`` protocol. Its first
``data_received`` decides: plain HTTP swaps in the proxy's ``ClientConnection`` on the same
transport and hands it those bytes; a ClientHello swaps in a TLS layer (asyncio's
``SSLProtocol``, fed the bytes already read) with the ``ClientConnection`` above it.

A client that connects and sends nothing is closed after ``first_byte_timeout_s``; one whose
handshake stalls, after ``handshake_timeout_s`` (``SSLProtocol``'s own timer). Connections are
admitted per client address (``conn_guard``, shared with the API) before anything else: past
its cap an address's new connection is closed at once."""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import cast

from atoll._conn_guard import ConnectionGuard, Ticket, process_guard, release_on_lost

log = logging.getLogger("atoll.router")

TLS_HANDSHAKE = 0x16
MAX_SNIFFING = 4096  # connections still waiting for their first byte; more are cut at once

ProtocolFactory = Callable[[], asyncio.Protocol]


class Sniffing:
    """What the ``Sniffer`` of each new connection on one router shares."""

    def __init__(
        self,
        *,
        plain: ProtocolFactory,
        secure: ProtocolFactory,
        ssl_context: ssl.SSLContext | None,
        first_byte_timeout_s: float,
        handshake_timeout_s: float,
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.guard = guard if guard is not None else process_guard()
        self.plain = plain
        self.secure = secure
        self.ssl_context = ssl_context
        self.first_byte_timeout_s = first_byte_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.waiting: set[Sniffer] = set()
        self.handshaking: dict[asyncio.Future[None], asyncio.Transport] = {}

    def protocol(self) -> asyncio.Protocol:
        return Sniffer(self)

    def close(self) -> None:
        """Cut the connections not yet handed to the proxy: silent so far, or mid-handshake."""
        for sniffer in list(self.waiting):
            sniffer.cut()
        for transport in list(self.handshaking.values()):
            transport.abort()
        self.handshaking.clear()

    def handshake_done(self, handshake: asyncio.Future[None]) -> None:
        self.handshaking.pop(handshake, None)
        # a failed handshake (not TLS after all, an untrusted certificate, silence) is the
        # client's business: SSLProtocol has closed the connection already
        if not handshake.cancelled() and (exc := handshake.exception()) is not None:
            log.debug("router: TLS handshake failed: %r", exc)


class Sniffer(asyncio.Protocol):
    """A new connection until its first bytes arrive."""

    __slots__ = ("shared", "ticket", "timer", "transport")

    def __init__(self, shared: Sniffing) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.ticket: Ticket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.ticket = self.shared.guard.admit_transport(transport)
        if self.ticket is None:
            return
        if len(self.shared.waiting) >= MAX_SNIFFING:
            self.transport.abort()
            return
        self.shared.waiting.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.shared.first_byte_timeout_s, self.cut)

    def _settled(self) -> asyncio.Transport:
        if self.timer is not None:
            self.timer.cancel()
        self.shared.waiting.discard(self)
        assert self.transport is not None
        return self.transport

    def cut(self) -> None:
        self._settled().abort()

    def data_received(self, data: bytes) -> None:
        transport = self._settled()
        shared = self.shared
        if data[0] == TLS_HANDSHAKE and shared.ssl_context is not None:
            self._start_tls(transport, shared.ssl_context, data)
            return
        protocol = shared.plain()
        self._hand_over(protocol)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)

    def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        self.shared.handshaking[handshake] = transport
        handshake.add_done_callback(self.shared.handshake_done)
        layer = sslproto.SSLProtocol(
            loop,
            self.shared.secure(),
            context,
            handshake,
            server_side=True,
            ssl_handshake_timeout=self.shared.handshake_timeout_s,  # type: ignore[arg-type]  # typeshed: int; any number works
        )
        self._hand_over(layer)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():  # the bytes already read go in first
            buffer = layer.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            layer.buffer_updated(size)
            view = view[size:]

    def eof_received(self) -> bool:
        self._settled()
        return False  # closed before saying anything: close our side too

    def _hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        """``protocol`` takes the connection: its ``connection_lost`` is the one called now."""
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            release_on_lost(protocol, ticket)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ticket is not None:
            self.ticket.release()
            self.ticket = None
        if self.transport is not None:
            self._settled()
