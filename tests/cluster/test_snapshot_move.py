"""A snapshot taken on node A restores on node B (issue #22): one real PostgreSQL, two nodes and
an API replica sharing a cluster token. A sandbox with a process counting in memory is
snapshotted on its node; the node is drained (``atoll node drain``); a restore through the
replica is placed on the other node, which copies the snapshot's files from the first (the
token-only internal archive) and restores it: the counter continues from the snapshot's memory
state, the files are there. The copy goes when the snapshot is deleted. Without the token, the
internal paths answer 404 and a restore naming a source 403."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api, counter
from tests._support.cluster import NodeProcess, two_nodes_and_replica
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged]
NODES = ("node-p", "node-q")


@pytest.fixture
def cluster(
    postgres: PostgresServer, tmp_path: Path
) -> Iterator[tuple[dict[str, NodeProcess], ServerProcess, str, str]]:
    with two_nodes_and_replica(
        postgres, tmp_path, NODES, first_index=22, replica_tag="w", org_id="org-mv"
    ) as c:
        yield c.nodes, c.replica, c.url, c.database


def _node_of(postgres: PostgresServer, database: str, sandbox_id: str) -> str:
    return postgres.psql(f"SELECT node_id FROM sandboxes WHERE id = '{sandbox_id}'", database)


def test_a_snapshot_taken_on_one_node_restores_on_another(
    cluster: tuple[dict[str, NodeProcess], ServerProcess, str, str], postgres: PostgresServer
) -> None:
    nodes, replica, url, database = cluster
    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=180) as http:
        if not http.get("/v1/health").json().get("checkpoint"):
            pytest.skip("snapshots need a checkpointing runtime on this host")
        sid = api.create(http, memory=512)["id"]
        home = _node_of(postgres, database, sid)
        other = next(n for n in NODES if n != home)
        api.run(http, sid, counter.START + "\necho kept > /root/kept\nsleep 1.5\n")
        before = counter.read(http, sid)
        made = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": f"mv-{sid}"})
        assert made.status_code == 201, made.text
        snapshot_id = made.json()["id"]

        drained = subprocess.run(
            [sys.executable, "-m", "atoll.cli.main", "node", "drain", home, "--database-url", url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert drained.returncode == 0, drained.stdout + drained.stderr
        restored = http.post("/v1/snapshot/restore", json={"snapshot_name": f"mv-{sid}"})
        assert restored.status_code == 201, restored.text
        fork = restored.json()["id"]
        assert _node_of(postgres, database, fork) == other
        copy = nodes[other].data_dir / "snapshots" / snapshot_id
        assert (copy / "image").is_dir()
        # the counter goes on from the snapshot's memory (a fresh start would count from 1)
        value = counter.read(http, fork)
        assert before <= value < before + 200, (before, value)
        assert api.run(http, fork, "cat /root/kept")["stdout"] == "kept\n"

        # the internal paths are the cluster's own
        archive = f"{nodes[home].own_url}/v1/internal/snapshot/{snapshot_id}/archive"
        assert httpx.get(archive, timeout=30).status_code == 404
        assert httpx.get(archive, headers={"x-atoll-cluster-token": "x" * 32}, timeout=30).status_code == 404
        forged = httpx.post(
            f"{nodes[other].own_url}/v1/snapshot/restore", json={"snapshot_name": f"mv-{sid}"},
            headers={**replica.headers, "x-atoll-snapshot-source": "http://127.0.0.1:1"}, timeout=60,
        )  # fmt: skip
        assert forged.status_code == 403, forged.text

        assert http.delete(f"/v1/sandbox/{fork}/").status_code == 204
        assert http.delete(f"/v1/sandbox/{sid}/").status_code == 204
        assert http.delete(f"/v1/snapshot/{snapshot_id}").status_code == 204
        deadline = time.monotonic() + 30
        while copy.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not copy.exists(), "the other node kept its copy of the deleted snapshot"
        for node in nodes.values():
            assert_no_leaks(node)
