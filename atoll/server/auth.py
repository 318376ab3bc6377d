"""API-key authentication: ``authorization`` or ``leap0-authorization``, raw or ``Bearer``.
Keys are looked up by their SHA-256; the org they belong to scopes every query."""

from __future__ import annotations

from fastapi import Request

from atoll._exceptions import AuthenticationError
from atoll.server.state import services

AUTH_HEADERS = ("authorization", "leap0-authorization")


def key_from_headers(headers: object) -> str | None:
    for name in AUTH_HEADERS:
        value = headers.get(name)  # type: ignore[attr-defined]
        if value:
            value = value.strip()
            if value[:7].lower() == "bearer ":
                value = value[7:].strip()
            return str(value) or None
    return None


async def require_org(request: Request) -> str:
    """FastAPI dependency: the caller's org id, or 401."""
    raw = key_from_headers(request.headers)
    if raw is None:
        raise AuthenticationError("missing API key: send 'authorization: Bearer <key>'")
    org_id = await services(request).repo.org_for_key(raw)
    if org_id is None:
        raise AuthenticationError("invalid API key")
    return str(org_id)
