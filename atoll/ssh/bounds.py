"""What one client may make the SSH gateway hold (issue 15, "bounded resources"): connections per
source address and in all, failed logins per source, a login deadline (asyncssh's own
``login_timeout``, counted from the TCP accept, so a client that never sends its version string
is closed too), and an idle deadline for logged-in connections.

Idle means no channel data either way: a shell's keystrokes or output, a command's stdin or
output, SFTP requests, bytes through an ``ssh -L`` tunnel. SSH keepalives are not data, so a
client's ``ServerAliveInterval`` does not keep an abandoned session open."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.forward import SSHForwarder

FAILED_LOGINS_PER_SOURCE = 10  # within FAILURE_WINDOW_S; then refused until the window passes
FAILURE_WINDOW_S = 60.0


@dataclass(frozen=True)
class GatewayLimits:
    login_timeout_s: float = 30.0
    idle_timeout_s: float = 3600.0  # 0: none
    max_connections_per_address: int = 16
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Any) -> GatewayLimits:
        return cls(
            login_timeout_s=settings.ssh_login_timeout_s,
            idle_timeout_s=settings.ssh_idle_timeout_s,
            max_connections_per_address=settings.ssh_max_connections_per_address,
            max_connections=settings.ssh_max_connections,
        )


class ConnectionCounts:
    """Open connections by source address; ``admit`` says why one is refused, or None."""

    def __init__(self, limits: GatewayLimits) -> None:
        self.limits = limits
        self.by_source: dict[str, int] = defaultdict(int)
        self.total = 0

    def admit(self, source: str) -> str | None:
        if self.total >= self.limits.max_connections:
            return "the gateway is at its connection limit"
        if self.by_source[source] >= self.limits.max_connections_per_address:
            return "too many connections from your address"
        self.by_source[source] += 1
        self.total += 1
        return None

    def release(self, source: str) -> None:
        self.total -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


class FailureLimiter:
    """Failed logins per source address in a sliding window."""

    def __init__(self, limit: int = FAILED_LOGINS_PER_SOURCE, window_s: float = FAILURE_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, source: str, now: float) -> deque[float]:
        found = self._failures[source]
        while found and found[0] <= now - self.window_s:
            found.popleft()
        if not found:
            del self._failures[source]
        return found

    def blocked(self, source: str, now: float | None = None) -> bool:
        return len(self._recent(source, now if now is not None else time.monotonic())) >= self.limit

    def failed(self, source: str, now: float | None = None) -> None:
        moment = now if now is not None else time.monotonic()
        self._recent(source, moment)
        self._failures[source].append(moment)


class IdleTimer:
    """Calls ``on_idle`` once ``timeout_s`` pass without a ``touch``. One timer handle re-armed
    for the time left, so a busy connection costs a float store per chunk, not a reschedule."""

    def __init__(self, timeout_s: float, on_idle: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self.on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        if timeout_s > 0:
            self._handle = self._loop.call_later(timeout_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        left = self.last + self.timeout_s - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self._handle = None
        self.on_idle()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ActiveForwarder(SSHForwarder):
    """asyncssh's TCP forwarder (``ssh -L``), marking the connection active on every chunk that
    passes, either way."""

    def __init__(self, touch: Callable[[], None], peer: SSHForwarder | None = None) -> None:
        self._touch = touch
        super().__init__(peer)

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        self._touch()
        super().data_received(data, datatype)


async def forward_tcp(host: str, port: int, touch: Callable[[], None]) -> SSHForwarder:
    """What ``SSHServerConnection.forward_connection`` does, with ``ActiveForwarder`` on both
    sides (raises ``ChannelOpenError`` when the destination refuses)."""
    loop = asyncio.get_running_loop()
    try:
        _, peer = await loop.create_connection(lambda: ActiveForwarder(touch), host, port)
    except OSError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    return ActiveForwarder(touch, peer)
