"""Mapping an unexpected answer to an error: the class, the message, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from atoll import APIError, ConflictError, RateLimitError, ServerError
from atoll.sdk._responses import api_error, parse_retry_after

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_api_error_keeps_everything() -> None:
    error = api_error(
        "POST",
        "/v1/sandbox",
        429,
        {"Retry-After": "2", "Content-Type": "application/json"},
        b'{"message": "slow down", "errors": [{"field": "x", "error": "y"}]}',
        expected=(201,),
    )
    assert isinstance(error, RateLimitError)
    assert (error.message, error.status_code, error.retry_after) == ("slow down", 429, 2.0)
    assert error.errors == [{"field": "x", "error": "y"}]
    assert error.headers["Retry-After"] == "2"
    assert error.__notes__ == ["request: POST /v1/sandbox"]


def test_api_error_fallback_messages() -> None:
    empty = api_error("GET", "/x", 409, {}, b"", expected=(200,), reason="Conflict")
    assert isinstance(empty, ConflictError)
    assert empty.message == "Conflict"
    unknown = api_error("GET", "/x", 599, {}, b"", expected=(200,))
    assert isinstance(unknown, ServerError)
    assert unknown.message == "HTTP 599"
    wrong_success = api_error("DELETE", "/x", 200, {}, b"{}", expected=(204,), reason="OK")
    assert type(wrong_success) is APIError
    assert wrong_success.message == "expected HTTP 204, got 200 OK"
