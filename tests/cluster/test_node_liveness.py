"""Two real processes against one real PostgreSQL (issue #22, phase 1): a node (``atoll node
run``: sandboxes on its host) and an API replica (``atoll serve --role api``). The node
registers and heartbeats; kill -9 of it, and within 10 s of its last heartbeat the surviving
process (which takes the liveness job's advisory lock over, if the node held it) marks it down
and reports its sandbox ``failed`` with the reason; restarted, the node is up again, removes
what its host still ran of the failed sandbox, and leaks nothing."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.cluster.leader import lock_key
from tests._support import api
from tests._support.cluster import create_key, side_node
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import serving, side_server

pytestmark = [pytest.mark.privileged]
DOWN_AFTER_S = 10.0  # the default: the acceptance's "within 10 s"
HEARTBEAT_S = 2.0


def _nodes(postgres: PostgresServer, database: str) -> dict[str, tuple[str, str]]:
    rows = postgres.psql("SELECT id, state, coalesce(state_reason, '') FROM nodes", database)
    return {r.split("|")[0]: (r.split("|")[1], r.split("|")[2]) for r in rows.splitlines() if r}


def _liveness_leader(postgres: PostgresServer, database: str) -> str:
    """The process (its connections' application_name) holding the liveness job's lock."""
    key = lock_key("atoll:liveness") & 0xFFFF_FFFF_FFFF_FFFF  # a bigint key: its two halves
    high, low = key >> 32, key & 0xFFFF_FFFF
    return postgres.psql(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        f" WHERE l.locktype = 'advisory' AND l.granted AND l.classid = {high} AND l.objid = {low}",
        database,
    )


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    name = "t_" + uuid.uuid4().hex[:12]
    yield postgres.create_database(name), name


def test_a_killed_node_is_marked_down_and_its_sandboxes_failed(
    postgres: PostgresServer, database: tuple[str, str], tmp_path: Path
) -> None:
    url, name = database
    common = ("--database-url", url, "--heartbeat-interval-s", str(HEARTBEAT_S))
    node = side_node(tmp_path / "node", "n", 0, extra_args=(*common, "--node-id", "node-b"))
    replica = side_server(
        tmp_path / "api", "r", 1, extra_args=(*common, "--role", "api", "--node-id", "api-a")
    )
    with serving(node), serving(replica):
        node_http = httpx.Client(base_url=node.base_url, headers=node.headers, timeout=120)
        api_http = httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=120)
        with node_http, api_http:
            assert _nodes(postgres, name) == {"node-b": ("up", "")}  # the replica is no node
            offer = postgres.psql("SELECT role, vcpu_budget > 0, templates::text FROM nodes", name)
            assert offer.startswith("node|t|") and "system/debian:bookworm" in offer, offer
            # keys minted straight into the shared store work through every process
            minted = create_key(url, "org-pg")
            for server in (node, replica):
                bearer = {"authorization": f"Bearer {minted}"}
                listed = httpx.get(f"{server.base_url}/v1/sandboxes", headers=bearer)
                assert listed.status_code == 200 and listed.json()["items"] == [], listed.text

            sandbox = api.create(node_http)["id"]
            assert api.run(node_http, sandbox, "echo hi")["stdout"] == "hi\n"
            seen = api_http.get(f"/v1/sandbox/{sandbox}/")
            assert seen.status_code == 200 and seen.json()["state"] == "running"  # one store
            # a create through the replica is placed on the one node (test_forwarding.py)
            placed = api.create(api_http)["id"]
            assert postgres.psql(f"SELECT node_id FROM sandboxes WHERE id = '{placed}'", name) == "node-b"
            api.delete(api_http, placed)

            assert _liveness_leader(postgres, name) == "node-b"  # started first, took the lock first
            node.kill9()
            killed_at = time.monotonic()
            state = None
            while time.monotonic() - killed_at < DOWN_AFTER_S + 5:
                state = api_http.get(f"/v1/sandbox/{sandbox}/").json()
                if state["state"] != "running":
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - killed_at
            assert state is not None and state["state"] == "failed", state
            # silent for 10 s since its last heartbeat (at most one interval before the kill)
            assert elapsed <= DOWN_AFTER_S + 1.5, f"marked down {elapsed:.1f} s after the kill"
            assert "node node-b stopped heartbeating" in state["state_reason"]
            assert _nodes(postgres, name)["node-b"][0] == "down"
            assert _liveness_leader(postgres, name) == "api-a"  # the lock went with the dead process

            node.start()  # back: up again; its host's leftovers of the failed sandbox removed
            assert _nodes(postgres, name)["node-b"] == ("up", "")
            assert node_http.get(f"/v1/sandbox/{sandbox}/").json()["state"] == "failed"
            api.delete(node_http, sandbox)
            assert_no_leaks(node)


def test_roles_need_postgresql(tmp_path: Path) -> None:
    for role in ("api", "node"):
        done = subprocess.run(
            [sys.executable, "-m", "atoll.cli.main", "serve", "--role", role, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode != 0
        assert "needs a PostgreSQL database_url" in done.stdout + done.stderr
