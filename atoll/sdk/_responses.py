"""Turning an unexpected HTTP answer into the right error from the one error tree. Pure, no I/O.

The server raises ``atoll._exceptions`` classes and renders them as ``{"message", "errors"?}`` with
``status_for``; here the SDK maps the status back with ``error_for_status``, so both ends agree on
one table and ``error.message`` is exactly what the server said.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from atoll._exceptions import APIError, error_for_status

_BODY_SNIPPET = 200


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` as delay-seconds or an HTTP date; None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _errors(payload: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = payload.get("errors")
    if not isinstance(raw, list):
        return []
    return [{str(k): str(v) for k, v in item.items()} for item in raw if isinstance(item, Mapping)]


def api_error(
    method: str,
    path: str,
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    expected: tuple[int, ...],
    reason: str = "",
) -> APIError:
    """The error for an answer whose status is not one of ``expected``."""
    payload: Any = None
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        pass
    payload = payload if isinstance(payload, dict) else {}
    server_message = payload.get("message")
    if isinstance(server_message, str) and server_message:
        message = server_message
    elif status_code < 400:
        # A success code other than the one the wire protocol promises is still a broken contract.
        wanted = " or ".join(str(code) for code in expected)
        message = f"expected HTTP {wanted}, got {status_code} {reason}".rstrip()
    else:
        snippet = body[:_BODY_SNIPPET].decode("utf-8", errors="replace").strip()
        message = snippet or reason or f"HTTP {status_code}"
    lowered = {key.lower(): value for key, value in headers.items()}
    error = error_for_status(status_code)(
        message,
        status_code=status_code,
        errors=_errors(payload),
        headers=dict(headers),
        body=body,
        retry_after=parse_retry_after(lowered.get("retry-after")),
    )
    # A note, not the message: ``message`` stays exactly what the server said.
    error.add_note(f"request: {method} {path}")
    return error
