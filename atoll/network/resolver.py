"""Atoll's DNS resolver for sandboxes (UDP and TCP), forwarding to the configured upstreams.

Every sandbox's ``/etc/resolv.conf`` names the host end of its veth; nftables redirects that to
this resolver, which knows the sandbox by its source address:
- ``deny-all`` resolves nothing; in ``custom`` mode, only allowed names (and transform
  domains) are resolved, and nothing else is even sent upstream (no DNS exfiltration through
  other names);
- when the policy learns names, the A records of an answer are handed to ``learn`` (which adds
  them to the sandbox's nft set) *before* the answer is sent, TTLs are capped, and addresses a
  sandbox may never reach are removed from the answer;
- AAAA answers are empty (sandboxes have no IPv6 egress: clients go straight to IPv4), and so
  are HTTPS/SVCB answers when names are learned (their address hints would bypass learning).

dnspython parses everything: queries come from untrusted code.

One sandbox cannot flood it into uselessness for the others (the resolver runs in the control
plane's event loop): the firewall drops a sandbox's queries past a per-source rate before
conntrack sees them (``firewall.DNS_*``), and here, per source address, queries past a token
bucket are dropped before they are parsed, answers in progress are bounded (per source and in
all), TCP connections are capped and closed when idle, and upstream queries in flight are
bounded (SERVFAIL past it)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from atoll.network.policy import AddressGuard, EgressPolicy

log = logging.getLogger("atoll.egress.dns")

UPSTREAM_TIMEOUT = 3.0
MAX_ANSWER_TTL = 3600  # learned addresses must not outlive what clients cache
EMPTY_TYPES_WHEN_LEARNING = frozenset({dns.rdatatype.HTTPS, dns.rdatatype.SVCB})
QUERY_RATE_PER_S = 200.0  # per source address (one sandbox); the firewall's limit is the same
QUERY_BURST = 400
PENDING_PER_SOURCE_MAX = 64  # answers being worked on for one source
PENDING_MAX = 1024  # ... for all
UPSTREAM_PENDING_MAX = 256  # queries out to the upstreams at once
TCP_PER_SOURCE_MAX = 8  # DNS-over-TCP connections one source may hold
TCP_MAX = 512
TCP_IDLE_TIMEOUT_S = 10.0


class SourceLimits:
    """Token buckets and counters per source address."""

    def __init__(self, rate_per_s: float = QUERY_RATE_PER_S, burst: float = QUERY_BURST) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # source: (tokens, at)
        self.pending: dict[str, int] = {}
        self.pending_total = 0
        self.tcp: dict[str, int] = {}
        self.tcp_total = 0
        self.dropped = 0

    def take(self, source: str, now: float) -> bool:
        """One query from ``source`` may be answered (a token and room in the pending bounds)."""
        tokens, at = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
        held = self.pending.get(source, 0)
        if tokens < 1 or held >= PENDING_PER_SOURCE_MAX or self.pending_total >= PENDING_MAX:
            self._buckets[source] = (tokens, now)
            self.dropped += 1
            return False
        if len(self._buckets) > 65536:  # sources come and go with sandboxes: forget the full ones
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        self._buckets[source] = (tokens - 1, now)
        self.pending[source] = held + 1
        self.pending_total += 1
        return True

    def done(self, source: str) -> None:
        held = self.pending.get(source, 0) - 1
        if held > 0:
            self.pending[source] = held
        else:
            self.pending.pop(source, None)
        self.pending_total -= 1

    def open_tcp(self, source: str) -> bool:
        held = self.tcp.get(source, 0)
        if held >= TCP_PER_SOURCE_MAX or self.tcp_total >= TCP_MAX:
            self.dropped += 1
            return False
        self.tcp[source] = held + 1
        self.tcp_total += 1
        return True

    def close_tcp(self, source: str) -> None:
        held = self.tcp.get(source, 0) - 1
        if held > 0:
            self.tcp[source] = held
        else:
            self.tcp.pop(source, None)
        self.tcp_total -= 1


class ResolvingSandbox(Protocol):
    policy: EgressPolicy

    def dns_answered(self, *, allowed: bool) -> None: ...
    async def learn(self, name: str, addresses: Sequence[tuple[ipaddress.IPv4Address, int]]) -> None: ...


def parse_upstream(value: str) -> tuple[str, int]:
    """``ip`` or ``ip:port`` (IPv4), or an IPv6 address, optionally as ``[ip]:port``."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        return host, int(port or 53)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


class Resolver:
    def __init__(
        self,
        *,
        upstreams: Sequence[tuple[str, int]],
        lookup: Callable[[str], ResolvingSandbox | None],
        guard: Callable[[], AddressGuard],
    ) -> None:
        self.upstreams = list(upstreams)
        self._lookup = lookup
        self._guard = guard
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.limits = SourceLimits()
        self._upstream_pending = 0
        self.port = 0

    async def start(self, host: str, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # UDP and TCP on one port: retry if the TCP side of a fresh port is taken
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port), family=socket.AF_INET
            )
            bound = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, host, bound)
            except OSError:
                transport.close()
                if port:
                    raise
                continue
            self._udp = transport
            self.port = bound
            return bound
        raise OSError("no free port for the DNS resolver")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        limits = self.limits
        if not limits.open_tcp(source):
            writer.transport.abort()
            return
        try:
            while True:
                size = int.from_bytes(
                    await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT_S), "big"
                )
                wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT_S)
                if not limits.take(source, resolver_time()):
                    break  # past its rate: the connection goes, the client retries later
                try:
                    reply = await self.answer(wire, source, max_size=65535)
                finally:
                    limits.done(source)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await asyncio.wait_for(writer.drain(), TCP_IDLE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            limits.close_tcp(source)
            writer.close()

    async def answer(self, wire: bytes, peer: str, *, max_size: int | None = None) -> bytes | None:
        """The reply to one query from ``peer``; None to stay silent."""
        try:
            request = dns.message.from_wire(wire)
        except Exception:
            return None
        if request.flags & dns.flags.QR:
            return None
        sandbox = self._lookup(peer)
        if sandbox is None:
            return _reply(request, dns.rcode.REFUSED, max_size)
        if request.opcode() != dns.opcode.QUERY or len(request.question) != 1:
            return _reply(request, dns.rcode.NOTIMP, max_size)
        question = request.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        policy = sandbox.policy
        if not policy.allows_name(name):
            sandbox.dns_answered(allowed=False)
            return _reply(request, dns.rcode.NXDOMAIN, max_size)
        sandbox.dns_answered(allowed=True)
        if question.rdtype == dns.rdatatype.AAAA or (
            policy.learns_names and question.rdtype in EMPTY_TYPES_WHEN_LEARNING
        ):
            return _reply(request, dns.rcode.NOERROR, max_size)
        upstream = await self._forward(question.name, question.rdtype, question.rdclass)
        if upstream is None:
            return _reply(request, dns.rcode.SERVFAIL, max_size)
        reply = dns.message.make_response(request)
        reply.flags |= dns.flags.RA
        reply.set_rcode(upstream.rcode())
        reply.answer = [rrset for rrset in upstream.answer if rrset.rdtype != dns.rdatatype.AAAA]
        reply.authority = list(upstream.authority)
        if policy.learns_names:
            learned = self._filter_and_cap(reply)
            if learned:
                await sandbox.learn(name, learned)
        return _to_wire(reply, request, max_size)

    def _filter_and_cap(self, reply: dns.message.Message) -> list[tuple[ipaddress.IPv4Address, int]]:
        guard = self._guard()
        chain_ttl = min((rrset.ttl for rrset in reply.answer), default=MAX_ANSWER_TTL)
        answer: list[dns.rrset.RRset] = []
        learned: list[tuple[ipaddress.IPv4Address, int]] = []
        for rrset in reply.answer:
            ttl = min(rrset.ttl, MAX_ANSWER_TTL)
            if rrset.rdtype == dns.rdatatype.A:
                kept = [rr for rr in rrset if not guard.forbidden(ipaddress.IPv4Address(rr.to_text()))]
                if not kept:
                    continue
                rrset = dns.rrset.from_rdata_list(rrset.name, ttl, kept)
                learned += [(ipaddress.IPv4Address(rr.to_text()), min(ttl, chain_ttl)) for rr in kept]
            else:
                rrset.ttl = ttl
            answer.append(rrset)
        reply.answer = answer
        return learned

    async def _forward(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, rdclass: dns.rdataclass.RdataClass
    ) -> dns.message.Message | None:
        if self._upstream_pending >= UPSTREAM_PENDING_MAX:
            return None  # SERVFAIL: a socket per query in flight, so they are bounded
        self._upstream_pending += 1
        try:
            query = dns.message.make_query(qname, rdtype, rdclass, use_edns=0, payload=1232)
            for host, port in self.upstreams:
                try:
                    response, _tcp = await dns.asyncquery.udp_with_fallback(
                        query, host, timeout=UPSTREAM_TIMEOUT, port=port
                    )
                except (dns.exception.DNSException, OSError, TimeoutError) as exc:
                    log.debug("upstream %s:%d failed: %s", host, port, exc)
                    continue
                if response.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                    continue
                return response
            return None
        finally:
            self._upstream_pending -= 1


def _reply(request: dns.message.Message, rcode: int, max_size: int | None) -> bytes:
    reply = dns.message.make_response(request)
    reply.flags |= dns.flags.RA
    reply.set_rcode(dns.rcode.Rcode(rcode))
    return _to_wire(reply, request, max_size)


def _to_wire(reply: dns.message.Message, request: dns.message.Message, max_size: int | None) -> bytes:
    limit = max_size or (max(512, request.payload) if request.edns >= 0 else 512)
    try:
        return reply.to_wire(max_size=limit)
    except dns.exception.TooBig:
        reply.flags |= dns.flags.TC
        reply.answer, reply.authority, reply.additional = [], [], []
        return reply.to_wire(max_size=limit)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        source = str(addr[0])
        resolver = self.resolver
        if resolver.limits.take(source, resolver_time()):  # else dropped unparsed: the client retries
            resolver._spawn(self._answer(data, addr, source))

    async def _answer(self, data: bytes, addr: tuple[str | object, int], source: str) -> None:
        try:
            with contextlib.suppress(Exception):
                reply = await self.resolver.answer(data, source)
                if reply is not None and self.transport is not None:
                    self.transport.sendto(reply, addr)
        finally:
            self.resolver.limits.done(source)


def resolver_time() -> float:
    return time.monotonic()
