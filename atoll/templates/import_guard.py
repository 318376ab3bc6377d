"""Where a registry import may connect, checked on every connection ``skopeo`` makes, not only
the first: a registry can redirect a blob, or name a token service, on any host, and a name
that resolved to a public address once can resolve to a private one a moment later (DNS
rebinding). ``check_source`` (``templates.oci``) refuses a bad registry name before anything
starts; this module keeps the pull itself on checked addresses.

``skopeo`` runs in a network namespace of its own that holds nothing but a loopback device, so it
can reach nothing by itself. Its only way out is an HTTP ``CONNECT`` proxy the server listens
with inside that namespace (``HTTPS_PROXY``): for each tunnel the proxy resolves the host itself,
refuses it when any address is loopback, private, link-local or otherwise not public (unless
the operator listed that registry), and connects to the address it checked, never resolving
twice. Go programs never send loopback targets through a proxy: those reach the namespace's own
loopback, where nothing answers, except for forwarders to the operator's listed loopback
registries. Plain-HTTP proxy requests are refused (registries speak HTTPS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("atoll.templates")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
HEAD_MAX = 8192
HEAD_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 30.0
MAX_TUNNELS = 32  # one import's concurrent connections (skopeo pulls a few layers at once)

Resolver = Callable[[str], Awaitable[list[str]]]
Refuse = Callable[[str], bool]  # address -> refused?


@dataclass
class Namespace:
    """A network namespace with only ``lo`` (up), and sockets listening in it."""

    ns_fd: int
    sockets: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        os.close(self.ns_fd)


def _make_namespace(listen: Sequence[tuple[str, int]]) -> Namespace:
    """On a thread of its own (a network namespace is per thread): a new namespace, its
    loopback up, and a listening socket for each (address, port) (port 0: any)."""
    made: list[Namespace | BaseException] = []

    def work() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
                flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING
                fcntl.ioctl(control, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags))
            namespace = Namespace(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            try:
                for address, port in listen:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    namespace.sockets.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((address, port))
                    sock.listen(64)
                    sock.setblocking(False)
            except BaseException:
                namespace.close()
                raise
            made.append(namespace)
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=work, name="atoll-import-netns")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _host_port(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not (0 < int(port) < 65536) or not host:
        return None
    return host.removeprefix("[").removesuffix("]").lower(), int(port)


class ImportGuard:
    """The namespace and proxy of one import. ``allowed``: the operator's registries
    (``host[:port]``, any address); ``refuse``: whether an address is off limits; ``resolve``:
    a name's addresses. After the pull, ``refused`` lists the targets it turned away."""

    def __init__(self, *, allowed: Sequence[str], refuse: Refuse, resolve: Resolver) -> None:
        self.allowed = {a.strip().lower().removeprefix("https://").rstrip("/") for a in allowed if a.strip()}
        self.refuse = refuse
        self.resolve = resolve
        self.refused: list[str] = []
        self._namespace: Namespace | None = None
        self._servers: list[asyncio.Server] = []
        self._tunnels: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_TUNNELS)
        self.proxy_port = 0

    def _loopback_forwards(self) -> list[tuple[str, int]]:
        """The operator's listed registries on a loopback address: Go connects to those
        directly, so the namespace gets a forwarder on each, to the same address on the host."""
        forwards = []
        for entry in self.allowed:
            parsed = _host_port(entry) or (entry, 443)
            host = "127.0.0.1" if parsed[0] == "localhost" else parsed[0]
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host).is_loopback:
                    forwards.append((host, parsed[1]))
        return forwards

    async def __aenter__(self) -> ImportGuard:
        forwards = self._loopback_forwards()
        listen = [("127.0.0.1", 0), *forwards]
        self._namespace = await asyncio.to_thread(_make_namespace, listen)
        try:
            proxy, *forwarders = self._namespace.sockets
            self.proxy_port = int(proxy.getsockname()[1])
            self._servers.append(await asyncio.start_server(self._serve_proxy, sock=proxy, limit=HEAD_MAX))
            for sock, (host, port) in zip(forwarders, forwards, strict=True):
                self._servers.append(await asyncio.start_server(self._forwarder(host, port), sock=sock))
        except BaseException:
            await self.__aexit__()
            raise
        return self

    def _forwarder(
        self, host: str, port: int
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._tunnel(reader, writer, [host], port, b"")

        return forward

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tunnels):
            task.cancel()
        await asyncio.gather(*self._tunnels, return_exceptions=True)
        if self._namespace is not None:
            self._namespace.close()

    def wrap(self, argv: Sequence[str]) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
        """``argv`` run inside the namespace: (argv, environment, descriptors to pass)."""
        assert self._namespace is not None
        fd = self._namespace.ns_fd
        proxy = f"http://127.0.0.1:{self.proxy_port}"
        proxy_vars = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
        env = {k: v for k, v in os.environ.items() if k.lower() not in proxy_vars}
        env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy)
        return ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv], env, (fd,)

    # the proxy -------------------------------------------------------------------------
    async def _serve_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = _host_port(rest.partition(" ")[0]) if method == "CONNECT" else None
        if target is None:
            self.refused.append(f"{method} {rest.partition(' ')[0]}"[:200])
            await self._answer(writer, b"403 Forbidden")
            return
        host, port = target
        addresses = await self._checked_addresses(host, port)
        if not addresses:
            await self._answer(writer, b"403 Forbidden")
            return
        await self._tunnel(reader, writer, addresses, port, b"HTTP/1.1 200 Connection established\r\n\r\n")

    async def _checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to try for ``host`` (IPv4 first), all checked; [] when refused."""
        listed = host in self.allowed or f"{host}:{port}" in self.allowed
        try:
            addresses = await self.resolve(host)
        except Exception:  # resolution failed: nothing to connect to
            addresses = []
        if not addresses:
            self.refused.append(f"{host}:{port} (does not resolve)")
            return []
        bad = [a for a in addresses if self.refuse(a)]
        if bad and not listed:
            log.warning("template import: refused a connection to %s:%d (%s)", host, port, bad[0])
            self.refused.append(f"{host}:{port} ({bad[0]})")
            return []
        return sorted(addresses, key=lambda a: ":" in a)

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        addresses: Sequence[str],
        port: int,
        hello: bytes,
    ) -> None:
        """Splice the client to the first of ``addresses`` (checked already) that answers."""
        task = asyncio.current_task()
        assert task is not None
        self._tunnels.add(task)
        try:
            async with self._slots:
                for address in addresses:
                    try:
                        up_reader, up_writer = await asyncio.wait_for(
                            asyncio.open_connection(address, port), CONNECT_TIMEOUT_S
                        )
                        break
                    except (OSError, TimeoutError):
                        continue
                else:
                    if hello:
                        await self._answer(writer, b"502 Bad Gateway")
                    return
                with contextlib.suppress(ConnectionError):
                    writer.write(hello)
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                finally:
                    up_writer.close()
        finally:
            self._tunnels.discard(task)
            writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            if sink.can_write_eof():
                sink.write_eof()
