"""What every client connection of one router shares (``_proxy.ClientConnection`` reads it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atoll.router._lookup import Lookup
from atoll.router._names import Names

if TYPE_CHECKING:
    from atoll.router._proxy import ClientConnection

# a request line and headers not complete this long after their first byte: a slow-loris (408)
HEAD_TIMEOUT_S = 10.0


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
    proto_header: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.proto_header = f"X-Forwarded-Proto: {self.scheme}\r\n".encode()
