"""What every client connection of one router shares (``_proxy.ClientConnection`` reads it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atoll._exceptions import APIError, OperationFailure, ServerError
from atoll.router._lookup import Lookup
from atoll.router._names import Names

if TYPE_CHECKING:
    from atoll.router._proxy import ClientConnection

# a request line and headers not complete this long after their first byte: a slow-loris (408)
HEAD_TIMEOUT_S = 10.0


def unmapped(failure: OperationFailure) -> APIError:
    """A failure below the router as an answer, when the server gave no mapping (a bare router)."""
    return ServerError(failure.message)


@dataclass(eq=False)
class ProxyContext:
    """What every connection of one router shares."""

    lookup: Lookup
    names: Names
    scheme: str = "http"
    connect_timeout: float = 5.0
    idle_timeout: float = 75.0
    head_timeout: float = HEAD_TIMEOUT_S
    connections: set[ClientConnection] = field(default_factory=set)
    all_closed: asyncio.Event | None = None  # set by the router while it stops
    # the cluster's shared secret: sent on hops to nodes' routers, required on hops from others
    cluster_token: str | None = None
    # typed failures (e.g. NodeUnreachable) to answers: the server's one table (server.errors)
    http_error: Callable[[OperationFailure], APIError] = unmapped
    proto_header: bytes = field(init=False)
    cluster_token_bytes: bytes | None = field(init=False)

    def __post_init__(self) -> None:
        self.proto_header = f"X-Forwarded-Proto: {self.scheme}\r\n".encode()
        self.cluster_token_bytes = self.cluster_token.encode() if self.cluster_token else None
