"""Database engine and migrations. SQLite by default (one host); PostgreSQL
(``postgresql+psycopg://user@/db?host=/socket/dir`` or ``...@host:port/db``, psycopg 3) when
several processes share state (docs/cluster.md). One set of Alembic migrations serves both."""

from __future__ import annotations

import select
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).parent / "migrations"

# the async drivers we support and their blocking twins, which Alembic runs with
# (psycopg 3 is both: SQLAlchemy picks its async or blocking side by the engine kind)
_SYNC_DRIVERS = {"sqlite+aiosqlite": "sqlite", "postgresql": "postgresql+psycopg"}
# the URLs ``make_engine`` accepts: what else is named is refused before anything connects
SUPPORTED_SCHEMES = ("sqlite+aiosqlite", "postgresql+psycopg", "postgresql")


class UnsupportedDatabase(ValueError):
    """A database URL of a kind Atoll does not run on."""


def check_url(url: str) -> str:
    """``url`` itself when Atoll runs on it (``postgresql://`` is taken as psycopg 3)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SUPPORTED_SCHEMES:
        raise UnsupportedDatabase(
            f"unsupported database URL scheme {scheme!r}: use sqlite+aiosqlite:///PATH or "
            "postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB (or ?host=/socket/dir)"
        )
    return ("postgresql+psycopg" if scheme == "postgresql" else scheme) + sep + rest


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


def sync_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return _SYNC_DRIVERS.get(scheme, scheme) + sep + rest


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolates "%": a password or socket path with one must survive it
    config.set_main_option("sqlalchemy.url", sync_url(check_url(url)).replace("%", "%%"))
    command.upgrade(config, "head")


def make_engine(
    url: str, *, application_name: str | None = None, pool_size: int | None = None
) -> AsyncEngine:
    """``application_name`` names this process's connections on PostgreSQL (``pg_stat_activity``:
    which node holds which lock); ``pool_size``: at most this many connections on PostgreSQL
    (default: SQLAlchemy's 5, with 10 more when busy)."""
    url = check_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"application_name": application_name[:63]} if application_name else {}
    sized = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 0}
    engine = create_async_engine(url, connect_args=connect_args, **sized)
    event.listen(engine.sync_engine, "checkout", _drop_if_server_hung_up)
    return engine


def _drop_if_server_hung_up(_dbapi_connection: object, record: ConnectionPoolEntry, _proxy: object) -> None:
    """A pooled connection the server has closed (a restart, ``pg_terminate_backend``, an idle
    timeout) is replaced before use. In place of a ping per checkout (a round trip: ~0.35 ms
    measured here, and a request checks out several times): an idle connection's socket is
    readable only when the server hung up or is hanging up, which a poll tells without a round
    trip. A false alarm (a parameter the server announces unasked after a configuration reload)
    costs a new connection. (A server that vanished without closing is not caught, by a ping
    neither: it hangs.)"""
    driver = record.driver_connection
    if driver is None or driver.closed or driver.broken:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(driver.fileno(), select.POLLIN)
    if poller.poll(0):  # poll, not select: a busy server's fds pass FD_SETSIZE (1024)
        raise DisconnectionError("the database server closed the connection")


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL: readers never wait for the writer; NORMAL sync is durable enough with WAL
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


__all__ = [
    "Engine",
    "UnsupportedDatabase",
    "check_url",
    "is_postgresql",
    "make_engine",
    "sessions",
    "sync_url",
    "upgrade",
]
