"""The one place the SDK does HTTP: a thin layer over an httpx client.

It adds authentication and the user agent, applies the per-call timeout, and turns every failure
into a class of the one error tree at this boundary (always ``raise ... from``), so nothing above
it ever sees an httpx exception or has to look at a status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from atoll._exceptions import AtollTimeoutError, TransportError
from atoll.sdk._config import DEFAULT_HTTP_TIMEOUT, SDK_VERSION, check_timeout
from atoll.sdk._responses import api_error

USER_AGENT = f"atoll-python/{SDK_VERSION}"


class AsyncTransport:
    """Sends requests to ``base_url + path`` and returns the response only if its status is expected."""

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        timeout: float = DEFAULT_HTTP_TIMEOUT,
        auth_header: str = "authorization",
        bearer: bool = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = check_timeout("timeout", timeout)
        self.auth_header = auth_header
        self.bearer = bearer
        self._api_key = api_key
        # A client passed in belongs to the caller (it may be shared); only close our own.
        self._owns_client = http_client is None
        # our own client verifies TLS with a context we can add the server's CA to (trust_ca)
        self._ssl_context = httpx.create_ssl_context() if http_client is None else None
        self._client = (
            http_client
            if http_client is not None
            else httpx.AsyncClient(timeout=self.timeout, verify=self._ssl_context or True)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, timeout={self.timeout!r})"

    def _auth_value(self) -> str:
        if self.bearer and not self._api_key.lower().startswith("bearer "):
            return f"Bearer {self._api_key}"
        return self._api_key

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {self.auth_header: self._auth_value(), "user-agent": USER_AGENT}
        if extra:
            headers.update(extra)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        expected_status: int | tuple[int, ...] = 200,
        timeout: float | None = None,  # it is the HTTP timeout, handed to httpx
    ) -> httpx.Response:
        """One HTTP exchange; any status other than ``expected_status`` raises an ``APIError``."""
        seconds = self.timeout if timeout is None else check_timeout("http_timeout", timeout)
        try:
            response = await self._client.request(
                method,
                self.base_url + path,
                params=params,
                json=json,
                content=content,
                headers=self._headers(headers),
                timeout=seconds,
            )
        except httpx.TimeoutException as exc:
            raise AtollTimeoutError(f"{method} {path} timed out after {seconds:g} s") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path} failed: {str(exc) or type(exc).__name__}") from exc
        expected = (expected_status,) if isinstance(expected_status, int) else expected_status
        if response.status_code not in expected:
            raise api_error(
                method,
                path,
                response.status_code,
                response.headers,
                response.content,
                expected=expected,
                reason=response.reason_phrase,
            )
        return response

    def for_base_url(self, base_url: str) -> AsyncTransport:
        """A transport to another host (a sandbox's own URL) with the same key, settings and
        connection pool. It never owns the pool: closing it is a no-op, closing this one ends both."""
        return AsyncTransport(
            self._api_key,
            base_url,
            timeout=self.timeout,
            auth_header=self.auth_header,
            bearer=self.bearer,
            http_client=self._client,
        )

    def trust_ca(self, pem: str) -> bool:
        """Also trust ``pem`` (the CA of an Atoll server's sandbox URLs) on this client's
        connections; False when the HTTP client is the caller's (its trust is the caller's)."""
        if self._ssl_context is None:
            return False
        self._ssl_context.load_verify_locations(cadata=pem)
        return True

    def auth_headers(self) -> dict[str, str]:
        """The headers every call carries (for connections made outside httpx: WebSockets)."""
        return self._headers(None)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        expected_status: int | tuple[int, ...] = 200,
        timeout: float | None = None,  # it is the HTTP timeout, handed to httpx
    ) -> AsyncIterator[httpx.Response]:
        """Like ``request``, but the body is sent and read as it goes: read the response's body
        inside the block. Errors map as in ``request``."""
        seconds = self.timeout if timeout is None else check_timeout("http_timeout", timeout)
        expected = (expected_status,) if isinstance(expected_status, int) else expected_status
        try:
            async with self._client.stream(
                method,
                self.base_url + path,
                params=params,
                json=json,
                content=content,
                headers=self._headers(headers),
                timeout=seconds,
            ) as response:
                if response.status_code not in expected:
                    await response.aread()
                    raise api_error(
                        method,
                        path,
                        response.status_code,
                        response.headers,
                        response.content,
                        expected=expected,
                        reason=response.reason_phrase,
                    )
                yield response
        except httpx.TimeoutException as exc:
            raise AtollTimeoutError(f"{method} {path} timed out after {seconds:g} s") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path} failed: {str(exc) or type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
