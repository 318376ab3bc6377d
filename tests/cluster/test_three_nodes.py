"""The cluster's acceptance on one machine (issue #22): a real PostgreSQL, two API replicas and
three nodes (each its own instance, subnet and interface prefix). 150 sandboxes created through
either replica spread over the three nodes within their budgets and each answers through the
other replica; kill -9 of one node: within 10 s of its last heartbeat its sandboxes are
``failed`` with the reason, the others' are untouched, and new creates land on the two left;
restarted, it is up again, reconciles, and leaks nothing."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.cluster import NodeProcess, create_key, side_node
from tests._support.leaks import api_sandboxes, assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess, serving, side_server

pytestmark = [pytest.mark.privileged]
SANDBOXES = 150
NODES = ("node-l", "node-m", "node-o")
DOWN_AFTER_S = 10.0


@dataclass
class Cluster:
    postgres: PostgresServer
    database: str
    nodes: dict[str, NodeProcess]
    replicas: list[ServerProcess]

    def sql(self, statement: str) -> list[list[str]]:
        return [line.split("|") for line in self.postgres.psql(statement, self.database).splitlines() if line]

    def node_of(self) -> dict[str, str]:
        recorded = self.sql("SELECT id, node_id FROM sandboxes WHERE state <> 'deleted'")
        return {sid: node for sid, node in recorded}


@pytest.fixture
def cluster(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    database = "t_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(database)
    common = ("--database-url", url, "--heartbeat-interval-s", "2")
    nodes = {}
    for index, node_id in enumerate(NODES):
        tag = node_id[-1]
        extra = (*common, "--node-id", node_id, "--netns-pool-size", "8")
        nodes[node_id] = side_node(tmp_path / node_id, tag, 16 + index, extra_args=extra)
    replicas = [
        side_server(
            tmp_path / tag, tag, 19 + i, extra_args=(*common, "--role", "api", "--node-id", f"api-{tag}")
        )
        for i, tag in enumerate(("s", "t"))
    ]
    with contextlib.ExitStack() as stack:
        for process in (*nodes.values(), *replicas):
            stack.enter_context(serving(process))
        key = create_key(url, "org-3n")
        for process in (*nodes.values(), *replicas):  # every client (the leak checker's too) is the org's
            process.api_key = key
        yield Cluster(postgres, database, nodes, replicas)


def test_150_sandboxes_over_three_nodes_and_a_node_killed(cluster: Cluster) -> None:
    a, b = (httpx.Client(base_url=r.base_url, headers=r.headers, timeout=180) for r in cluster.replicas)
    with a, b:

        def create(number: int) -> str:
            return str(api.create((a, b)[number % 2], memory=512, timeout=1800)["id"])

        with ThreadPoolExecutor(6) as pool:
            made = list(pool.map(create, range(SANDBOXES)))
        where = cluster.node_of()
        assert set(made) <= set(where)
        spread = Counter(where[sid] for sid in made)
        # one organisation: one per node first, so the three hold a third each (to one)
        assert set(spread) == set(NODES) and max(spread.values()) - min(spread.values()) <= 1, spread
        for node_id, vcpu, budget_vcpu, memory, budget_memory in cluster.sql(
            "SELECT id, vcpu_reserved, cpus * 128, memory_mib_reserved, memory_mib * 8 FROM nodes"
        ):
            assert 0 < int(vcpu) <= int(budget_vcpu) and 0 < int(memory) <= int(budget_memory), node_id
        # each answers through the replica it was not made through (a sample: every tenth)
        for number in range(0, SANDBOXES, 10):
            out = api.run((b, a)[number % 2], made[number], "echo ok")
            assert out["stdout"] == "ok\n", out

        victim = NODES[0]
        on_victim = {sid for sid in made if where[sid] == victim}
        cluster.nodes[victim].kill9()
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < DOWN_AFTER_S + 5:
            if cluster.sql(f"SELECT state FROM nodes WHERE id = '{victim}'") == [["down"]]:
                break
            time.sleep(0.2)
        assert time.monotonic() - killed_at <= DOWN_AFTER_S + 1.5
        states = api_sandboxes(cluster.replicas[1])
        assert {sid for sid in made if states[sid] == "failed"} == on_victim
        reason = a.get(f"/v1/sandbox/{next(iter(on_victim))}").json()["state_reason"]
        assert f"node {victim} stopped heartbeating" in reason, reason
        # new creates go to the two left, and what ran there still runs
        fresh = [create(n) for n in range(6)]
        assert {cluster.node_of()[sid] for sid in fresh} == set(NODES[1:])
        survivor = next(sid for sid in made if where[sid] != victim)
        assert api.run(b, survivor, "echo still")["stdout"] == "still\n"

        cluster.nodes[victim].start()  # back: up, its failed sandboxes' processes removed
        assert cluster.sql(f"SELECT state FROM nodes WHERE id = '{victim}'") == [["up"]]
        for sid in [*made, *fresh]:
            assert a.delete(f"/v1/sandbox/{sid}/").status_code == 204, sid
        for node in cluster.nodes.values():
            assert_no_leaks(node)
        deadline = time.monotonic() + 30
        while cluster.sql("SELECT count(*) FROM placements") != [["0"]] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.sql("SELECT sum(vcpu_reserved), sum(memory_mib_reserved) FROM nodes") == [["0", "0"]]
