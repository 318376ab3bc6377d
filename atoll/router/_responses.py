"""The router's own answers: the API's JSON error shape ``{"message"}`` as raw HTTP/1.1 bytes."""

from __future__ import annotations

import json
from http import HTTPStatus

from atoll._exceptions import APIError, ServerError, status_for


class BadGateway(ServerError):
    """The sandbox port refused, timed out or dropped the connection."""

    status_code = 502


def error_response(error: APIError, *, close: bool) -> bytes:
    status = status_for(error)
    body = json.dumps(error.to_body()).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if status == 401:
        head.append('WWW-Authenticate: Bearer realm="atoll"')
    if error.retry_after is not None:
        head.append(f"Retry-After: {int(error.retry_after)}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
