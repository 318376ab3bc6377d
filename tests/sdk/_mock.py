"""A fake control plane for SDK tests: canned answers per route, every request recorded."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def sandbox_json(**overrides: Any) -> dict[str, Any]:
    """A SandboxCreateResponse as the server sends it."""
    data: dict[str, Any] = {
        "id": "sbx-abc123",
        "template_id": "tpl-debian",
        "vcpu": 1,
        "memory": 1024,
        "disk": 10240,
        "timeout": 300,
        "state": "running",
        "auto_pause": False,
        "created_at": "2026-01-01T00:00:00Z",
        "network_policy": None,
    }
    data.update(overrides)
    return data


def status_json(**overrides: Any) -> dict[str, Any]:
    """A SandboxStatusResponse: the same minus network_policy."""
    data = sandbox_json(**overrides)
    data.pop("network_policy", None)
    return data


class Router:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._answers: dict[tuple[str, str], Answer] = {}

    def on(
        self,
        method: str,
        path: str,
        status: int = 200,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Router:
        if json is not None:
            answer = httpx.Response(status, json=json, headers=headers)
        else:
            answer = httpx.Response(status, content=content or b"", headers=headers)
        self._answers[method, path] = answer
        return self

    def handle(self, method: str, path: str, handler: Callable[[httpx.Request], httpx.Response]) -> Router:
        self._answers[method, path] = handler
        return self

    def fail(self, method: str, path: str, error: Exception) -> Router:
        self._answers[method, path] = error
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        # Route on the path as sent (still percent-encoded), the way a server sees it.
        path = request.url.raw_path.decode("ascii").partition("?")[0]
        answer = self._answers.get((request.method, path))
        if answer is None and (request.method, path.rpartition("/v1/")[2]) == ("GET", "health"):
            # a client left to the server's sandbox URL scheme asks once; this server does not say
            answer = httpx.Response(200, json={"status": "ok"})
        if answer is None:
            raise AssertionError(f"unexpected request {request.method} {path}")
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def last(self) -> httpx.Request:
        assert self.requests, "no request was sent"
        return self.requests[-1]

    def last_json(self) -> Any:
        return json.loads(self.last.content)

    def last_timeout(self) -> float:
        return float(self.last.extensions["timeout"]["read"])


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent in exactly these chunks, for the sync and the async client alike;
    ``sent`` counts the chunks handed out so far (to tell streaming from buffering)."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True
