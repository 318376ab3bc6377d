"""The egress proxy: every TCP connection a sandbox opens to an address it learned from Atoll's
resolver arrives here (nftables ``redirect``), with its original destination in
``SO_ORIGINAL_DST``. The proxy reads the client's first bytes and decides:

- TLS whose SNI is a transform's domain: terminate TLS with the sandbox's CA and rewrite
  headers on the way upstream (``transform``);
- otherwise, in ``custom`` mode, a TLS SNI or HTTP ``Host`` must be an allowed name that this
  sandbox resolved to this very address; a TLS or HTTP client that names nothing is refused,
  and so is a name resolved elsewhere (shared IPs cannot be used to reach another name);
- a protocol that carries no name (or where the server speaks first) passes if the address was
  learned from an allowed name.

What passes is relayed as opaque bytes. The upstream connection is opened as the client's first
bytes are awaited, so a server-speaks-first protocol works and adds no latency."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any, Protocol

from atoll.network import transform as http_transform
from atoll.network.policy import AddressGuard, EgressPolicy, TransformRule
from atoll.network.sniff import MAX_PEEK, Sniffed, sniff
from atoll.network.tlsstream import TlsStream

log = logging.getLogger("atoll.egress.proxy")

SO_ORIGINAL_DST = 80
READ_SIZE = 256 * 1024
CONNECT_TIMEOUT = 10.0
FIRST_BYTES_TIMEOUT = 300.0  # neither side said anything for this long: give up


class ProxiedSandbox(Protocol):
    """What the proxy needs to know about the sandbox behind a source address."""

    policy: EgressPolicy

    def learned_for(self, name: str, address: ipaddress.IPv4Address) -> bool: ...
    def learned_any(self, address: ipaddress.IPv4Address) -> bool: ...
    def server_context(self, name: str) -> ssl.SSLContext: ...
    def connection(self, *, allowed: bool, transformed: bool = False) -> None: ...
    def traffic(self, *, sent: int = 0, received: int = 0) -> None: ...


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


def decide(sandbox: ProxiedSandbox, address: ipaddress.IPv4Address, sniffed: Sniffed) -> TransformRule | bool:
    """The transform to apply, True to pass the bytes through, or False to refuse."""
    policy = sandbox.policy
    if policy.mode == "deny-all":
        return False
    name = sniffed.name
    if sniffed.kind == "tls" and name:
        rule = policy.transform_for(name)
        if rule is not None and sandbox.learned_for(name, address):
            return rule
    if policy.mode == "allow-all" or policy.cidr_allows(address):
        return True
    if sniffed.kind in ("tls", "http"):
        return bool(name) and policy.allows_name(name or "") and sandbox.learned_for(name or "", address)
    return sandbox.learned_any(address)


class EgressProxy:
    def __init__(
        self,
        *,
        lookup: Callable[[str], ProxiedSandbox | None],
        guard: Callable[[], AddressGuard],
        upstream_tls: ssl.SSLContext,
    ) -> None:
        self._lookup = lookup
        self._guard = guard
        self._upstream_tls = upstream_tls
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self, host: str, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except Exception:
            log.exception("egress proxy connection failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        sandbox = self._lookup(peer[0]) if peer else None
        sock = writer.get_extra_info("socket")
        target = original_destination(sock) if sandbox is not None and sock is not None else None
        if sandbox is None or target is None:
            return
        address = ipaddress.IPv4Address(target[0])
        if self._guard().closed_to(sandbox.policy, address):
            sandbox.connection(allowed=False)
            return
        connect = asyncio.ensure_future(
            asyncio.wait_for(asyncio.open_connection(target[0], target[1], limit=READ_SIZE), CONNECT_TIMEOUT)
        )
        try:
            first, server_first = await self._first_bytes(reader, connect)
        except BaseException:
            connect.cancel()
            raise
        sniffed = (sniff(first) if first else None) or Sniffed("other")
        verdict = decide(sandbox, address, sniffed)
        if verdict is False:
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            sandbox.connection(allowed=False)
            return
        if isinstance(verdict, TransformRule):
            await self._transform(sandbox, reader, writer, connect, first, sniffed.name or "", verdict)
            return
        up_reader, up_writer = await connect
        sandbox.connection(allowed=True)
        sandbox.traffic(sent=len(first), received=len(server_first or b""))
        try:
            if first:
                up_writer.write(first)
            if server_first:
                writer.write(server_first)
            await _relay(reader, writer, up_reader, up_writer, sandbox)
        finally:
            up_writer.close()

    async def _first_bytes(
        self,
        reader: asyncio.StreamReader,
        connect: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ) -> tuple[bytes, bytes | None]:
        """(what the client said first, read until it can be classified; what the server said if
        it spoke first, else None). Cancelling a pending read loses nothing: data stays buffered."""
        client = asyncio.ensure_future(reader.read(READ_SIZE))
        server: asyncio.Future[bytes] | None = None
        try:
            while not client.done():
                waiting: set[asyncio.Future[Any]] = {client, server if server is not None else connect}
                done, _ = await asyncio.wait(
                    waiting, timeout=FIRST_BYTES_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise ConnectionResetError("nothing said")
                if client.done():
                    break
                if server is None:
                    if connect.exception() is not None:  # the upstream refused: nothing to relay
                        raise ConnectionRefusedError("upstream unreachable")
                    server = asyncio.ensure_future(connect.result()[0].read(READ_SIZE))
                elif server.done():
                    if not server.result():
                        raise ConnectionResetError("upstream closed")
                    break  # the server speaks first: a protocol that carries no name
        finally:
            if not client.done():
                client.cancel()
            if server is not None and not server.done():
                server.cancel()
        said = server.result() if server is not None and server.done() and not server.cancelled() else None
        data = client.result() if client.done() and not client.cancelled() else b""
        if said is None:
            if not data:
                raise ConnectionResetError("client closed")
            while sniff(data) is None and len(data) < MAX_PEEK:
                more = await asyncio.wait_for(reader.read(READ_SIZE), FIRST_BYTES_TIMEOUT)
                if not more:
                    break
                data += more
        return data, said

    async def _transform(
        self,
        sandbox: ProxiedSandbox,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connect: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        first: bytes,
        name: str,
        rule: TransformRule,
    ) -> None:
        sandbox.connection(allowed=True, transformed=True)
        client = TlsStream.server(
            sandbox.server_context(name),
            reader,
            writer,
            initial=first,
            on_bytes=lambda received, sent: sandbox.traffic(sent=received, received=sent),
        )
        sandbox.traffic(sent=len(first))
        await client.handshake()

        async def upstream() -> TlsStream:
            up_reader, up_writer = await connect
            stream = TlsStream.client(self._upstream_tls, up_reader, up_writer, server_hostname=name)
            try:
                await asyncio.wait_for(stream.handshake(), CONNECT_TIMEOUT)
            except BaseException:
                up_writer.close()
                raise
            return stream

        try:
            await http_transform.serve(client, upstream, rule)
        finally:
            if not connect.done():
                connect.cancel()
            await client.aclose()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
    try:
        while data := await src.read(READ_SIZE):
            dst.write(data)
            count(len(data))
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    sandbox: ProxiedSandbox,
) -> None:
    await asyncio.gather(
        _pipe(reader, up_writer, lambda n: sandbox.traffic(sent=n)),
        _pipe(up_reader, writer, lambda n: sandbox.traffic(received=n)),
    )
