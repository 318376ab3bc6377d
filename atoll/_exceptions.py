"""One error tree for the SDK and the server.

    AtollError
    ├── InvalidArgument              bad input caught before any request (status_code None)
    ├── TransportError               the network failed (connect, read, protocol)
    │   ├── AtollTimeoutError        an HTTP call or an operation ran out of time
    │   └── MalformedResponseError   a success answer whose body breaks the wire protocol
    └── APIError                     the server answered with an error status
        ├── BadRequestError          400, carries ``errors`` [{field, error}]
        ├── AuthenticationError      401
        ├── PermissionDeniedError    403
        ├── NotFoundError            404
        ├── ConflictError            409  (wrong state, duplicate name, org limit)
        ├── RateLimitError           429  (``retry_after`` seconds)
        └── ServerError              5xx
            └── UnavailableError     503  (not ready yet, e.g. a template being built; ``retry_after``)
                └── CapacityError    503  (the host has no room; ``retry_after``)

The server raises these same classes; ``status_for`` maps a class to its HTTP status by
walking the MRO, and the SDK maps a status back with ``error_for_status``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class AtollError(Exception):
    """Base of every error Atoll raises."""

    status_code: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AtollError, ValueError):
    """An argument failed validation on the client; nothing was sent."""

    def __init__(self, field: str, error: str) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


class TransportError(AtollError):
    """The HTTP exchange itself failed."""

    retryable = True


class AtollTimeoutError(TransportError, TimeoutError):
    """An HTTP call or a server-side operation did not finish in time."""


class MalformedResponseError(TransportError):
    """The server answered with the expected status, but the body is not what the wire protocol says
    (not JSON, or a required field such as ``id`` missing). Asking again will not help."""

    retryable = False


class APIError(AtollError):
    """The server answered with an error status."""

    status_code: int | None = 500

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.errors = [dict(e) for e in errors or ()]
        self.headers = dict(headers or {})
        self.body = body
        self.retry_after = retry_after

    @property
    def error_message(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return self.status_code is not None and (self.status_code == 429 or self.status_code >= 500)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body

    def __str__(self) -> str:
        return f"{self.status_code} {self.message}"


class BadRequestError(APIError):
    status_code = 400


class AuthenticationError(APIError):
    status_code = 401


class PermissionDeniedError(APIError):
    status_code = 403


class NotFoundError(APIError):
    status_code = 404


class ConflictError(APIError):
    status_code = 409


class RateLimitError(APIError):
    status_code = 429


class ServerError(APIError):
    status_code = 500


class UnavailableError(ServerError):
    """Temporarily unable to serve the request; ``retry_after`` says when to ask again."""

    status_code = 503


class CapacityError(UnavailableError):
    status_code = 503


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
    503: CapacityError,
}


def error_for_status(status_code: int) -> type[APIError]:
    """The most specific error class for an HTTP status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else APIError


def status_for(error: APIError) -> int:
    """The HTTP status the server answers with for an error (instance value, else the class's)."""
    return error.status_code or 500
