"""Presigned URLs: an unguessable token that opens one port of one sandbox without an API key.

The token (160 random bits, lowercase base32 so it survives DNS case folding) is returned once
and stored only as its SHA-256. The router looks tokens up through a short-lived cache that a
delete in this process clears at once; other processes sharing the database see a delete within
``ttl`` seconds."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll.router._names import TOKEN_PREFIX
from atoll.store.models import PresignedUrl, utcnow

DEFAULT_EXPIRES_IN = 3600
_CACHE_MAX = 4096


def new_token() -> str:
    return TOKEN_PREFIX + base64.b32encode(secrets.token_bytes(20)).decode().lower()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token opens."""

    id: str
    org_id: str
    sandbox_id: str
    port: int
    expires_at: float  # unix time

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def _grant(row: PresignedUrl) -> Grant:
    return Grant(row.id, row.org_id, row.sandbox_id, row.port, row.expires_at.timestamp())


class PresignedStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl: float = 5.0) -> None:
        self.sessions = sessions
        self.ttl = ttl
        self._cache: dict[str, tuple[Grant, float]] = {}  # token hash -> (grant, cached at)

    async def create(
        self, *, org_id: str, sandbox_id: str, port: int, expires_in: int = DEFAULT_EXPIRES_IN
    ) -> tuple[PresignedUrl, str]:
        """A new presigned URL row and its token (the only time the token exists in clear)."""
        token = new_token()
        now = utcnow()
        row = PresignedUrl(
            id="psu_" + secrets.token_hex(8),
            org_id=org_id,
            sandbox_id=sandbox_id,
            port=port,
            token_hash=hash_token(token),
            expires_at=now + dt.timedelta(seconds=expires_in),
            created_at=now,
        )
        async with self.sessions.begin() as s:
            # expired rows are useless: drop them as new ones are made
            await s.execute(delete(PresignedUrl).where(PresignedUrl.expires_at < now - dt.timedelta(hours=1)))
            s.add(row)
        return row, token

    async def delete(self, *, org_id: str, sandbox_id: str, presigned_id: str) -> bool:
        async with self.sessions.begin() as s:
            row = await s.get(PresignedUrl, presigned_id)
            if row is None or row.org_id != org_id or row.sandbox_id != sandbox_id:
                return False
            self._cache.pop(row.token_hash, None)
            await s.delete(row)
        self._cache.pop(row.token_hash, None)
        return True

    def cached(self, token: str) -> Grant | None:
        entry = self._cache.get(hash_token(token))
        if entry is None or time.monotonic() - entry[1] > self.ttl:
            return None
        return entry[0]

    async def find(self, token: str) -> Grant | None:
        """The grant for ``token`` (expired ones included: the caller tells them apart)."""
        digest = hash_token(token)
        async with self.sessions() as s:
            row = await s.scalar(select(PresignedUrl).where(PresignedUrl.token_hash == digest))
        if row is None:
            self._cache.pop(digest, None)
            return None
        grant = _grant(row)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (grant, time.monotonic())
        return grant
