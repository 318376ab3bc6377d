"""A connected terminal: raw bytes over a WebSocket, as a hand-written async/sync pair (the leaf
under the generated clients, like the transport's httpx clients).

``recv()`` returns the next output, and ``b""`` once the session has ended (the server closed the
socket normally); an abnormal close raises ``TransportError``. ``websockets`` is imported only
when a terminal is opened, so ``import atoll`` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from atoll._exceptions import AtollTimeoutError, TransportError


def _bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message


def _closed(exc: Exception) -> bytes:
    from websockets.exceptions import ConnectionClosedOK

    if isinstance(exc, ConnectionClosedOK):
        return b""
    raise TransportError(f"terminal connection lost: {exc}") from exc


class AsyncPtyConnection:
    def __init__(self, websocket: Any) -> None:
        self._ws = websocket

    async def send(self, data: bytes | str) -> None:
        """Type ``data`` into the terminal (a str is sent as UTF-8)."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(_bytes(data))
        except ConnectionClosed as exc:
            raise TransportError(f"terminal connection closed: {exc}") from exc

    async def recv(self, timeout: float | None = None) -> bytes:
        import asyncio

        from websockets.exceptions import ConnectionClosed

        try:
            return _bytes(await asyncio.wait_for(self._ws.recv(), timeout))
        except TimeoutError:
            raise AtollTimeoutError(f"no terminal output within {timeout:g} s") from None
        except ConnectionClosed as exc:
            return _closed(exc)

    async def aclose(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class PtyConnection:
    def __init__(self, websocket: Any) -> None:
        self._ws = websocket

    def send(self, data: bytes | str) -> None:
        """Type ``data`` into the terminal (a str is sent as UTF-8)."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(_bytes(data))
        except ConnectionClosed as exc:
            raise TransportError(f"terminal connection closed: {exc}") from exc

    def recv(self, timeout: float | None = None) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            return _bytes(self._ws.recv(timeout))
        except TimeoutError:
            raise AtollTimeoutError(f"no terminal output within {timeout:g} s") from None
        except ConnectionClosed as exc:
            return _closed(exc)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _header_options(headers: Mapping[str, str]) -> dict[str, Any]:
    extra = {k: v for k, v in headers.items() if k.lower() != "user-agent"}
    agent = next((v for k, v in headers.items() if k.lower() == "user-agent"), None)
    return {"additional_headers": extra, "user_agent_header": agent}


def _open_error(exc: Exception, url: str) -> Exception:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        from atoll.sdk._responses import api_error

        response = exc.response
        return api_error(
            "GET",
            url,
            response.status_code,
            dict(response.headers),
            bytes(response.body or b""),
            expected=(101,),
        )
    if isinstance(exc, TimeoutError):
        return AtollTimeoutError(f"opening the terminal at {url} timed out")
    return TransportError(f"could not open the terminal at {url}: {exc}")


async def aconnect(url: str, headers: Mapping[str, str], timeout: float) -> AsyncPtyConnection:
    from websockets.asyncio.client import connect as ws_connect

    try:
        websocket = await ws_connect(url, open_timeout=timeout, max_size=None, **_header_options(headers))
    except Exception as exc:
        raise _open_error(exc, url) from exc
    return AsyncPtyConnection(websocket)


def connect(url: str, headers: Mapping[str, str], timeout: float) -> PtyConnection:
    from websockets.sync.client import connect as ws_connect

    try:
        websocket = ws_connect(
            url, open_timeout=timeout, max_size=None, legacy=True, **_header_options(headers)
        )
    except Exception as exc:
        raise _open_error(exc, url) from exc
    return PtyConnection(websocket)
