"""Request validation: each check raises BadRequestError naming the field (answered as 400
``{"message", "errors": [{"field", "error"}]}``)."""

from __future__ import annotations

import json
from typing import Any


class BadRequestError(Exception):
    def __init__(self, field: str, error: str) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error

    def body(self) -> dict[str, Any]:
        return {"message": "Invalid request", "errors": [{"field": self.field, "error": self.error}]}


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError("body", "is not valid JSON") from exc
    if not isinstance(data, dict):
        raise BadRequestError("body", "must be a JSON object")
    return data


def integer(
    data: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequestError(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(name, "must be an integer")
    if low is not None and value < low:
        raise BadRequestError(name, f"must be >= {low}")
    if high is not None and value > high:
        raise BadRequestError(name, f"must be <= {high}")
    return value


def required_int(data: dict[str, Any], name: str, *, low: int | None = None, high: int | None = None) -> int:
    value = integer(data, name, required=True, low=low, high=high)
    assert value is not None
    return value


def query_ints(params: dict[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """Query parameters as integers (a value that is not one names its parameter)."""
    out: dict[str, Any] = {}
    for name in names:
        raw = params.get(name)
        if raw is None or raw == "":
            continue
        try:
            out[name] = int(raw)
        except ValueError as exc:
            raise BadRequestError(name, "must be an integer") from exc
    return out


def string(data: dict[str, Any], name: str, *, max_chars: int, allow_empty: bool = False) -> str:
    value = data.get(name)
    if value is None:
        raise BadRequestError(name, "is required")
    if not isinstance(value, str):
        raise BadRequestError(name, "must be a string")
    if not value and not allow_empty:
        raise BadRequestError(name, "must not be empty")
    if len(value) > max_chars:
        raise BadRequestError(name, f"must be at most {max_chars} characters")
    return value


def image_format(value: Any, name: str = "format") -> str:
    if value is None:
        return "png"
    if value not in ("png", "jpg", "jpeg"):
        raise BadRequestError(name, "must be one of: png, jpg, jpeg")
    return "png" if value == "png" else "jpeg"


def in_screen(name: str, value: int, limit: int) -> None:
    """Coordinates must lie on the screen (0 <= value < limit)."""
    if value >= limit:
        raise BadRequestError(name, f"must be < {limit} (the screen is {limit} pixels along it)")
