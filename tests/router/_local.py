"""In-process harness for the proxy itself: the real ``Router`` on its own event loop thread, a
fake ``Lookup`` (no control plane) and ``sandbox_app.py`` on loopback as the upstream."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from atoll._exceptions import AuthenticationError, NotFoundError
from atoll.router import Destination, Names, Router, SandboxTarget, Target, TokenTarget
from tests._support.server import free_port

APP = Path(__file__).with_name("sandbox_app.py")
DOMAIN = "sbx.test"
KEY = "k-local"
T = TypeVar("T")


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class App:
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, log: Path) -> App:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(APP), str(port), str(log), "127.0.0.1"])
        wait_listening(port)
        return cls(port, log, proc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class FakeLookup:
    """Sandbox ids map to loopback ports; ``fast`` decides whether ``cached`` ever answers."""

    ports: dict[str, int]
    tokens: dict[str, tuple[str, int]] = field(default_factory=dict)
    fast: bool = True
    resolved: int = 0

    def _find(self, target: Target, api_key: str | None) -> Destination:
        if isinstance(target, TokenTarget):
            if target.token not in self.tokens:
                raise NotFoundError("presigned URL not found")
            sandbox_id, port = self.tokens[target.token]
            return Destination("127.0.0.1", port, sandbox_id)
        assert isinstance(target, SandboxTarget)
        if api_key != KEY:
            raise AuthenticationError("invalid API key" if api_key else "missing API key")
        if target.sandbox_id not in self.ports:
            raise NotFoundError(f"sandbox {target.sandbox_id} not found")
        return Destination("127.0.0.1", target.port or self.ports[target.sandbox_id], target.sandbox_id)

    def cached(self, target: Target, api_key: str | None) -> Destination | None:
        if not self.fast:
            return None
        try:
            return self._find(target, api_key)
        except Exception:
            return None

    async def resolve(self, target: Target, api_key: str | None) -> Destination:
        self.resolved += 1
        await asyncio.sleep(0)
        return self._find(target, api_key)


class RouterThread:
    def __init__(self, lookup: FakeLookup, ssl_context: ssl.SSLContext | None = None, **kw: Any) -> None:
        self.port = free_port()
        self.loop = uvloop.new_event_loop()
        self.router = Router(
            lookup=lookup,
            names=Names(DOMAIN),
            hosts=("127.0.0.1",),
            port=self.port,
            ssl_context=ssl_context,
            **kw,
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> RouterThread:
        self.thread.start()
        self.run(self.router.start())
        return self

    def stop(self) -> None:
        self.run(self.router.stop(timeout=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def host(self, sandbox_id: str, port: int | None = None) -> str:
        label = sandbox_id if port is None else f"{sandbox_id}-{port}"
        return f"{label}.{DOMAIN}:{self.port}"
