"""A draining node's paused sandboxes move to other nodes (issue #22): one real PostgreSQL, two
nodes and an API replica sharing a cluster token. Sandboxes are made on node A (B drained
meanwhile); one counts in memory and is paused (its policy terminates TLS for a domain, so it
has an egress CA of its own), one stays running, one is paused too. With both nodes draining
no node has room: the paused ones stay on A, paused, and one of them resumes there. Once B
takes sandboxes again, a first try fails on B (its sandboxes directory made immutable): the
sandbox stays on A, B leaks nothing. The next try moves it to B: same id, still paused, A's
copy gone; resumed through the replica its counter goes on from the checkpointed memory, its
file is there, and it trusts the same egress CA as before (B signs with it). The running ones
stay on A."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.network.egress_trust import CA_DIR, GUEST_BUNDLE, GUEST_CA
from tests._support import api, counter
from tests._support.cluster import NodeProcess, two_nodes_and_replica
from tests._support.leaks import assert_no_leaks, host_view, option
from tests._support.postgres import PostgresServer
from tests._support.server import IFACE_PREFIX, INSTANCE, ServerProcess

pytestmark = [pytest.mark.privileged]
NODES = ("node-a", "node-b")
MOVE_TIMEOUT_S = 240.0  # generous; the nodes try a failed move again after RETRY_AFTER_S
# shorter than the default 30 s, but not so short that a second try (which sets the sandbox's
# move_id while under way) could overlap the checks made right after the first one failed
RETRY_AFTER_S = 10
TRANSFORMING = {
    "mode": "allow-all",
    "transforms": [{"domain": "api.example.test", "inject_headers": {"X-Key": "k"}}],
}


@pytest.fixture
def cluster(
    postgres: PostgresServer, tmp_path: Path
) -> Iterator[tuple[dict[str, NodeProcess], ServerProcess, str, str]]:
    with two_nodes_and_replica(
        postgres,
        tmp_path,
        NODES,
        first_index=25,
        replica_tag="v",
        org_id="org-dm",
        node_args=("--drain-retry-after-s", str(RETRY_AFTER_S)),
    ) as c:
        yield c.nodes, c.replica, c.url, c.database


def _column(postgres: PostgresServer, database: str, sandbox_id: str, column: str) -> str:
    return postgres.psql(f"SELECT {column} FROM sandboxes WHERE id = '{sandbox_id}'", database)


def _node_cli(url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "atoll.cli.main", "node", *args, "--database-url", url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line for line in mountinfo if str(path) in line]


def _assert_holds_no_sandbox(node: NodeProcess, timeout_s: float = 15.0) -> None:
    """Nothing of any sandbox on the node's host: no container, root mount, disk, state
    directory or per-sandbox firewall object, and only its pool's network namespaces (the leak
    checker compares with the API's list, which in a cluster holds other nodes' sandboxes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pool_ready = httpx.get(f"{node.own_url}/v1/health", timeout=10).json()["network_pool_ready"]
        view = host_view(
            node.data_dir,
            instance=option(node, "--instance", INSTANCE),
            iface_prefix=option(node, "--iface-prefix", IFACE_PREFIX),
        )
        held = (view.containers, view.mounts, view.dirs, view.loops, view.egress_slots)
        if not any(held) and len(view.netns) == len(view.veths) == pool_ready:
            return
        if time.monotonic() > deadline:
            netns = f"{len(view.netns)} netns for {pool_ready} pooled"
            raise AssertionError(f"node {node.instance} holds {held}, {netns}")
        time.sleep(0.3)


def test_a_draining_nodes_paused_sandbox_moves_and_resumes_on_another(
    cluster: tuple[dict[str, NodeProcess], ServerProcess, str, str], postgres: PostgresServer
) -> None:
    nodes, replica, url, database = cluster
    a, b = NODES
    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=180) as http:
        if not http.get("/v1/health").json().get("checkpoint"):
            pytest.skip("moving a paused sandbox needs a checkpointing runtime on this host")
        _node_cli(url, "drain", b)  # the sandboxes are made on A
        # the moving one terminates TLS for a domain (a transform): its egress CA moves with it
        moving = api.create(http, memory=512, network_policy=TRANSFORMING)["id"]
        running, refused = (api.create(http, memory=512)["id"] for _ in range(2))
        assert {_column(postgres, database, sid, "node_id") for sid in (moving, running, refused)} == {a}
        api.run(http, moving, counter.START + "\necho kept > /root/kept\nsleep 1.5\n")
        before = counter.read(http, moving)
        trusted = api.run(http, moving, f"cat /{GUEST_CA}; grep -c BEGIN /{GUEST_BUNDLE}")["stdout"]
        assert "BEGIN CERTIFICATE" in trusted, trusted
        api.run(http, refused, "echo here > /root/here")
        for sid in (moving, refused):
            assert http.post(f"/v1/sandbox/{sid}/pause").status_code in (200, 201)
            assert _column(postgres, database, sid, "pause_kind") == "checkpoint"

        # no node has room (both draining): the paused sandboxes stay on A, paused, resumable
        _node_cli(url, "drain", a)
        time.sleep(8)  # several of the mover's ticks (2 s)
        for sid in (moving, refused):
            assert _column(postgres, database, sid, "node_id") == a
            assert http.get(f"/v1/sandbox/{sid}").json()["state"] == "paused"
        assert f"{a}" in (listed := _node_cli(url, "list")) and "sandboxes (paused)" in listed
        assert "3 (2)" in next(line for line in listed.splitlines() if f" {a} " in line), listed
        assert api.run(http, refused, "cat /root/here")["stdout"] == "here\n"  # resumed on A
        assert _column(postgres, database, refused, "node_id") == a

        # B takes sandboxes again but fails to receive one (its sandboxes directory immutable):
        # the sandbox stays on A, paused, and B keeps nothing of it
        b_sandboxes = nodes[b].data_dir / "sandboxes"
        subprocess.run(["chattr", "+i", str(b_sandboxes)], check=True)
        try:
            _node_cli(url, "undrain", b)
            deadline = time.monotonic() + MOVE_TIMEOUT_S
            while "refused the sandbox" not in nodes[a].log_tail(400) and time.monotonic() < deadline:
                time.sleep(1)
            assert "refused the sandbox" in nodes[a].log_tail(400), nodes[a].log_tail()
            assert _column(postgres, database, moving, "node_id") == a
            assert _column(postgres, database, moving, "move_id") == ""
            assert http.get(f"/v1/sandbox/{moving}").json()["state"] == "paused"
            assert list(b_sandboxes.iterdir()) == []
            _assert_holds_no_sandbox(nodes[b])
        finally:
            subprocess.run(["chattr", "-i", str(b_sandboxes)], check=True)

        # the next try: A's paused sandbox moves to B, the others stay
        deadline = time.monotonic() + MOVE_TIMEOUT_S
        while _column(postgres, database, moving, "node_id") != b and time.monotonic() < deadline:
            time.sleep(1)
        assert _column(postgres, database, moving, "node_id") == b, nodes[a].log_tail()
        record = http.get(f"/v1/sandbox/{moving}").json()
        assert (record["id"], record["state"]) == (moving, "paused")
        assert _column(postgres, database, moving, "move_id") == ""
        a_copy = nodes[a].data_dir / "sandboxes" / moving
        deadline = time.monotonic() + 60
        while (a_copy.exists() or _mounts_under(a_copy)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not a_copy.exists() and not _mounts_under(a_copy), "node A kept its copy"
        assert (nodes[b].data_dir / "sandboxes" / moving / "checkpoint").is_dir()

        # resumed on B: the counter goes on from the checkpointed memory (a fresh start counts from 1)
        value = counter.read(http, moving)
        assert before <= value < before + 200, (before, value)
        assert api.run(http, moving, "cat /root/kept")["stdout"] == "kept\n"
        # the CA its processes loaded before the move is the one B's proxy signs with: the same
        # certificate in its trust store, and no second one added (B made no CA of its own)
        assert api.run(http, moving, f"cat /{GUEST_CA}; grep -c BEGIN /{GUEST_BUNDLE}")["stdout"] == trusted
        assert (nodes[b].data_dir / "sandboxes" / moving / CA_DIR).is_dir()
        assert api.run(http, moving, "echo $((6 * 7))")["stdout"] == "42\n"
        assert http.get(f"/v1/sandbox/{moving}").json()["state"] == "running"
        assert _column(postgres, database, moving, "node_id") == b
        for sid in (running, refused):  # running sandboxes never move
            assert _column(postgres, database, sid, "node_id") == a
            assert http.get(f"/v1/sandbox/{sid}").json()["state"] == "running"
        # its placement went with it: the room is held on B, none on A
        placed = postgres.psql(f"SELECT node_id FROM placements WHERE sandbox_id = '{moving}'", database)
        assert placed == b

        for sid in (moving, running, refused):
            assert http.delete(f"/v1/sandbox/{sid}").status_code == 204
        for node in nodes.values():
            assert_no_leaks(node)
