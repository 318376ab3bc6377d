"""Connections one client address may hold open, and the file descriptors kept for everyone else.

Without a key a client can still open TCP connections to the API and the router and never
finish a request: each costs the server one fd until a timeout, and the process has a fixed
number. So, per process (the API and the router share the budget, as they share the fds):

- ``raise_fd_limit`` lifts ``RLIMIT_NOFILE`` at start (root may raise the hard limit too);
- one address holds at most ``PER_ADDRESS_MAX`` connections; past it, new ones from it are
  closed as soon as they are accepted (the fd is back at once);
- once the connections in all take the process within ``FD_RESERVE`` of its limit, only
  addresses holding fewer than ``RESERVE_PER_ADDRESS`` get in: a flood from a few addresses
  cannot take the last fds, so health checks and admin requests from elsewhere still answer.

Time limits (header read, idle) are each protocol's: ``limits.LimitedHttpToolsProtocol`` for the
API, ``router._proxy``/``router._listener`` for the router.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from typing import Any, cast

log = logging.getLogger("atoll.server")  # the API and the router share it

FD_LIMIT_TARGET = 65536  # RLIMIT_NOFILE asked for at start (never lowered)
PER_ADDRESS_MAX = 1024  # connections one client address may hold, API and router together
FD_RESERVE = 4096  # fds kept for sandboxes, files, the store and small clients
RESERVE_PER_ADDRESS = 16  # what an address may still open once only the reserve is left


def raise_fd_limit(target: int = FD_LIMIT_TARGET) -> int:
    """Raise the soft (and, as root, the hard) limit on open files to ``target``; returns the
    soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            target = min(target, int(f.read()))
    except (OSError, ValueError):
        pass
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (OSError, ValueError):  # not allowed to raise the hard limit: up to it then
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Ticket:
    """One admitted connection; ``release`` is idempotent, so every path that may end the
    connection can call it."""

    __slots__ = ("address", "guard")

    def __init__(self, guard: ConnectionGuard, address: str) -> None:
        self.guard: ConnectionGuard | None = guard
        self.address = address

    def release(self) -> None:
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.release(self.address)


class ConnectionGuard:
    """Counts open connections per client address and decides admission at accept time."""

    def __init__(
        self,
        *,
        per_address_max: int = PER_ADDRESS_MAX,
        fd_reserve: int = FD_RESERVE,
        reserve_per_address: int = RESERVE_PER_ADDRESS,
        fd_limit: int | None = None,
    ) -> None:
        self.per_address_max = per_address_max
        self.reserve_per_address = reserve_per_address
        limit = fd_limit if fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.open_max = max(limit - fd_reserve, limit // 2)
        self.by_address: Counter[str] = Counter()
        self.total = 0
        self.refused = 0
        self._last_warning = 0.0

    def admit(self, address: str) -> Ticket | None:
        held = self.by_address[address]
        if held >= self.per_address_max or (self.total >= self.open_max and held >= self.reserve_per_address):
            self.refused += 1
            self._warn(address, held)
            return None
        self.by_address[address] = held + 1
        self.total += 1
        return Ticket(self, address)

    def release(self, address: str) -> None:
        held = self.by_address[address] - 1
        if held > 0:
            self.by_address[address] = held
        else:
            del self.by_address[address]
        self.total -= 1

    def admit_transport(self, transport: asyncio.BaseTransport) -> Ticket | None:
        """Admit the connection on ``transport`` or abort it at once (None)."""
        ticket = self.admit(peer_address(transport))
        if ticket is None:
            cast(asyncio.Transport, transport).abort()  # no answer: the fd is back at once
        return ticket

    def _warn(self, address: str, held: int) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # a flood must not flood the log too
            self._last_warning = now
            log.warning(
                "connection from %s refused: it holds %d (at most %d), %d open in all (%d refused so far)",
                address, held, self.per_address_max, self.total, self.refused,
            )  # fmt: skip


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer: Any = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "" if peer is None else str(peer)


def release_on_lost(protocol: asyncio.BaseProtocol, ticket: Ticket) -> None:
    """Release ``ticket`` when ``protocol`` loses its connection: for a protocol swapped in on a
    transport (a WebSocket, a TLS layer) whose ``connection_lost`` is then the one called."""
    lost = protocol.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        ticket.release()
        lost(exc)

    protocol.connection_lost = connection_lost  # type: ignore[method-assign]


_guard: ConnectionGuard | None = None


def process_guard() -> ConnectionGuard:
    """The one guard of this process (the API and the router share the fds)."""
    global _guard
    if _guard is None:
        _guard = ConnectionGuard()
    return _guard


def configure_process_guard(*, per_address_max: int = PER_ADDRESS_MAX) -> ConnectionGuard:
    """Make the process's guard anew with the operator's cap (``--max-connections-per-address``),
    after ``raise_fd_limit`` and before the first connection."""
    global _guard
    _guard = ConnectionGuard(per_address_max=per_address_max)
    return _guard
