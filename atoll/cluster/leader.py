"""One process of the cluster at a time runs a singleton job (marking silent nodes down): the
one that holds a PostgreSQL session-level advisory lock. The lock lives on a connection kept
for it, so it is released the moment that process dies (its connection closes), and another
process takes the job over on its next try. On SQLite there is one process: it always leads."""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("atoll.cluster")


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class AdvisoryLeader:
    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = lock_key(f"atoll:{name}")
        self._connection: AsyncConnection | None = None
        self._postgresql = engine.dialect.name == "postgresql"

    @property
    def leading(self) -> bool:
        return not self._postgresql or self._connection is not None

    async def try_lead(self) -> bool:
        """Whether this process leads now: it held the lock, or just took it. A lost database
        connection loses the lead (the lock went with it); the next try may take it again."""
        if not self._postgresql:
            return True
        if self._connection is not None:
            try:
                await self._connection.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("lost the %s lead: its database connection failed", self.name)
                await self._drop()
        connection = await self.engine.connect()
        try:
            took = await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key})
            await connection.commit()  # the session lock outlives the transaction; none left open
        except Exception:
            await connection.close()
            raise
        if not took:
            await connection.close()
            return False
        log.info("leading %s", self.name)
        self._connection = connection
        return True

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.invalidate()  # never back to the pool: it may still hold the lock
            except Exception:
                log.debug("closing a failed leader connection", exc_info=True)

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            await connection.commit()
        finally:
            await connection.close()
