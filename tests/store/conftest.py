"""The store's tests run on both databases Atoll supports: SQLite (one host) and PostgreSQL (a
cluster; the session's throwaway server, a new database per test), migrated by the one set of
Alembic migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atoll.store import db


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL (not migrated)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'atoll.db'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.create_database())


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database's engine."""
    db.upgrade(store_url)
    engine = db.make_engine(store_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return db.sessions(engine)
