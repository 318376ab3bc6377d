"""The cluster's settings (``Settings.role`` and the heartbeat timing): what a node or an API
replica needs is checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from atoll.server.cluster_role import node_identity
from atoll.server.settings import Settings

PG = "postgresql+psycopg://atoll@/atoll?host=/run/postgresql"


def test_node_and_api_need_postgresql() -> None:
    for role in ("node", "api"):
        with pytest.raises(ValidationError, match="needs a PostgreSQL database_url"):
            Settings(role=role)
        with pytest.raises(ValidationError, match="needs a PostgreSQL database_url"):
            Settings(role=role, database_url="sqlite+aiosqlite:////tmp/x.db")
    assert Settings(role="node", database_url=PG).role == "node"


def test_an_api_replica_keeps_no_warm_sandboxes(monkeypatch: pytest.MonkeyPatch) -> None:
    replica = Settings(role="api", database_url=PG)
    assert (replica.warm_pool_size, replica.warm_desktop_pool_size, replica.disk_pool_size) == (0, 0, 0)
    with pytest.raises(ValidationError, match="runs no sandboxes"):
        Settings(role="api", database_url=PG, warm_pool_size=2)
    monkeypatch.setenv("ATOLL_ROLE", "api")
    monkeypatch.setenv("ATOLL_DATABASE_URL", PG)
    assert Settings().warm_pool_size == 0  # the same from the environment
    assert Settings(role="all", database_url=PG).warm_pool_size == 2  # a node keeps its default


def test_an_api_replica_keeps_only_its_own_directories(tmp_path: Path) -> None:
    replica = Settings(role="api", database_url=PG, data_dir=tmp_path)
    assert not replica.runs_sandboxes
    assert replica.private_dirs == (tmp_path, tmp_path / "user-templates")  # no /run/atoll, no sandboxes
    node = Settings(role="node", database_url=PG, data_dir=tmp_path)
    assert node.runs_sandboxes and {node.sandboxes_dir, node.run_dir} <= set(node.private_dirs)


def test_heartbeats_fit_in_the_down_interval() -> None:
    with pytest.raises(ValidationError, match="two heartbeat intervals"):
        Settings(heartbeat_interval_s=6, node_down_after_s=10)


def test_node_identity() -> None:
    assert node_identity(Settings()) is None  # one host, SQLite: no cluster
    assert node_identity(Settings(database_url=PG, node_id="host-a")) == "host-a"
    assert (node_identity(Settings(database_url=PG, instance="x")) or "").startswith("x@")
    assert (node_identity(Settings(role="api", database_url=PG, instance="x")) or "").startswith("api-x@")
    with pytest.raises(ValidationError):
        Settings(node_id="bad id with spaces")
