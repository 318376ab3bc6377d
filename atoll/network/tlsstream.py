"""TLS over an asyncio stream pair with memory BIOs, so that a handshake can start from bytes
already read (the proxy peeks at the ClientHello before it decides to terminate TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

READ_SIZE = 256 * 1024


class TlsStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        *,
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._on_bytes = on_bytes  # (received, sent) raw bytes on the wire

    @classmethod
    def server(
        cls,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        initial: bytes = b"",
        on_bytes: Callable[[int, int], None] | None = None,
    ) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        incoming.write(initial)
        obj = context.wrap_bio(incoming, outgoing, server_side=True)
        return cls(reader, writer, obj, incoming, outgoing, on_bytes=on_bytes)

    @classmethod
    def client(
        cls,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server_hostname: str,
    ) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        return cls(reader, writer, obj, incoming, outgoing)

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            if self._on_bytes:
                self._on_bytes(0, len(data))
            await self._writer.drain()

    async def _fill(self) -> bool:
        data = await self._reader.read(READ_SIZE)
        if not data:
            self._in.write_eof()
            return False
        if self._on_bytes:
            self._on_bytes(len(data), 0)
        self._in.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("peer closed during the TLS handshake") from None
                continue
            await self._flush()
            return

    async def recv(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` plaintext bytes; b"" at the end of the stream."""
        while True:
            try:
                return self._obj.read(size)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    with contextlib.suppress(ssl.SSLError):
                        return self._obj.read(size)
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def send(self, data: bytes) -> None:
        self._obj.write(data)
        await self._flush()

    @property
    def selected_alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    async def aclose(self) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            self._obj.unwrap()
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            await self._flush()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
