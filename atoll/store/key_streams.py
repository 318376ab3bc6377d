"""The long-lived streams (WebSockets, SSE) open per API key, so revoking a key ends them at
once: a refused key must not keep a terminal, a process's output or a live list it opened
earlier (``Repository.revoke_key`` calls ``revoke``). Keys are known here by their hash only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class KeyStreams:
    def __init__(self) -> None:
        self._open: dict[str, set[asyncio.Event]] = {}  # key hash -> one event per open stream

    @contextlib.contextmanager
    def opened(self, key_hash: str) -> Iterator[asyncio.Event]:
        """While the block runs, a stream opened with the key: the event is set when it is revoked."""
        revoked = asyncio.Event()
        self._open.setdefault(key_hash, set()).add(revoked)
        try:
            yield revoked
        finally:
            held = self._open.get(key_hash)
            if held is not None:
                held.discard(revoked)
                if not held:
                    del self._open[key_hash]

    def revoke(self, key_hash: str) -> int:
        """End every stream open with the key; how many there were."""
        held = self._open.pop(key_hash, set())
        for revoked in held:
            revoked.set()
        return len(held)

    def count(self) -> int:
        return sum(len(held) for held in self._open.values())
