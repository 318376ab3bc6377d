"""One set of Alembic migrations builds the same schema on SQLite and PostgreSQL: the models'
(nothing for autogenerate to add), and it goes down to nothing and up again on both."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from atoll.store import db
from atoll.store.models import Base
from tests._support.postgres import PostgresServer


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    config.set_main_option("sqlalchemy.url", db.sync_url(db.check_url(url)).replace("%", "%%"))
    return config


def _differences(url: str) -> list[object]:
    engine = create_engine(db.sync_url(db.check_url(url)))
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(db.sync_url(db.check_url(url)))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_build_the_models_schema(store_url: str) -> None:
    db.upgrade(store_url)
    assert _differences(store_url) == []
    assert {"sandboxes", "nodes", "api_keys", "snapshots"} <= _tables(store_url)
    db.upgrade(store_url)  # idempotent: a second server starting on the same database


def test_migrations_go_down_and_up_again(store_url: str) -> None:
    db.upgrade(store_url)
    command.downgrade(_config(store_url), "base")
    assert _tables(store_url) <= {"alembic_version"}
    db.upgrade(store_url)
    assert _differences(store_url) == []


def test_an_unsupported_url_is_refused_before_connecting() -> None:
    for url in ("mysql+aiomysql://u@h/db", "postgresql+asyncpg://u@h/db", "atoll.db"):
        try:
            db.make_engine(url)
        except db.UnsupportedDatabase as e:
            assert "postgresql+psycopg" in str(e)
        else:
            raise AssertionError(f"{url} was accepted")
    assert db.check_url("postgresql://u@/d?host=/run") == "postgresql+psycopg://u@/d?host=/run"


def test_processes_starting_together_migrate_one_at_a_time(postgres: PostgresServer, tmp_path: Path) -> None:
    """Replicas of a cluster start at once: each runs the migrations, none fails on another's."""
    url = postgres.create_database()
    go = tmp_path / "go"  # all start migrating at the same moment, imports done
    code = (
        "import os, sys, time; from atoll.store import db\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.002)\n"
        "db.upgrade(sys.argv[1])"
    )
    migrating = [subprocess.Popen([sys.executable, "-c", code, url, str(go)]) for _ in range(4)]
    time.sleep(3)
    go.touch()
    assert [p.wait(timeout=120) for p in migrating] == [0] * 4
    assert _differences(url) == []
