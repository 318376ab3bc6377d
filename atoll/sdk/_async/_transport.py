"""The one place the SDK does HTTP: a thin layer over an httpx client.

It adds authentication and the user agent, applies the per-call timeout, and turns every failure
into a class of the one error tree at this boundary (always ``raise ... from``), so nothing above
it ever sees an httpx exception or has to look at a status code.
"""

from __future__ import annotations

from collections.abc import Mapping
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
        self._client = http_client if http_client is not None else httpx.AsyncClient(timeout=self.timeout)

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
