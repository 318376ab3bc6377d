"""SSH access credentials: created per sandbox, the id is the SSH user name, the password is
shown once (only its hash is stored), each one expires; ``regen`` replaces the password.

Passwords are 32 random bytes (URL-safe base64), so a fast hash is enough: nobody can guess
their way back from SHA-256 of 256 random bits, and a login costs no CPU to check."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll.store.models import SshAccessRow, utcnow

ID_PREFIX = "ssh-"
PASSWORD_BYTES = 32


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def password_hash(password: str) -> str:
    return "sha256:" + hashlib.sha256(password.encode()).hexdigest()


def matches(row: SshAccessRow, password: str, now: dt.datetime | None = None) -> bool:
    """The password is this access's, and the access has not expired."""
    if (now or utcnow()) >= row.expires_at:
        return False
    return hmac.compare_digest(row.password_hash, password_hash(password))


class AccessStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: int) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s

    async def create(self, org_id: str, sandbox_id: str) -> tuple[SshAccessRow, str]:
        password = new_password()
        now = utcnow()
        row = SshAccessRow(
            id=ID_PREFIX + secrets.token_hex(8),
            org_id=org_id,
            sandbox_id=sandbox_id,
            password_hash=password_hash(password),
            expires_at=now + dt.timedelta(seconds=self.ttl_s),
            created_at=now,
            updated_at=now,
        )
        async with self.sessions.begin() as s:
            s.add(row)
        return row, password

    async def get(self, access_id: str) -> SshAccessRow | None:
        async with self.sessions() as s:
            return await s.get(SshAccessRow, access_id)

    async def find(self, org_id: str, sandbox_id: str, access_id: str) -> SshAccessRow | None:
        row = await self.get(access_id)
        if row is None or row.org_id != org_id or row.sandbox_id != sandbox_id:
            return None
        return row

    async def regen(self, row: SshAccessRow) -> tuple[SshAccessRow, str]:
        password = new_password()
        now = utcnow()
        async with self.sessions.begin() as s:
            found = await s.get(SshAccessRow, row.id)
            if found is None:
                raise LookupError(row.id)
            found.password_hash = password_hash(password)
            found.expires_at = now + dt.timedelta(seconds=self.ttl_s)
            found.updated_at = now
        refreshed = await self.get(row.id)
        assert refreshed is not None
        return refreshed, password

    async def delete(self, access_id: str) -> None:
        async with self.sessions.begin() as s:
            await s.execute(delete(SshAccessRow).where(SshAccessRow.id == access_id))

    async def delete_for_sandbox(self, sandbox_id: str) -> None:
        async with self.sessions.begin() as s:
            await s.execute(delete(SshAccessRow).where(SshAccessRow.sandbox_id == sandbox_id))

    async def count_for_sandbox(self, sandbox_id: str) -> int:
        async with self.sessions() as s:
            found = await s.execute(select(SshAccessRow.id).where(SshAccessRow.sandbox_id == sandbox_id))
            return len(found.all())
