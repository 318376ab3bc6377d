"""An organisation's template in a cluster (issue #22, docs/cluster.md "Templates"): one real
PostgreSQL, two nodes and an API replica sharing a cluster token. A template is imported through
the replica from a local OCI archive (built here: no registry is contacted) and the import is
done by a node, its progress streamed back; a create lands on that node (it has the template
cached). The node is drained: two concurrent creates go to the other node, which copies the
template's files once from the first (the token-only internal archive) and boots both; each
sandbox, on either node, shows the image's file. Deleting the template through the replica is
refused while sandboxes use it, then removes every node's copy; with no node up, an import is
503; nothing leaks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.cluster import NodeProcess, two_nodes_and_replica
from tests._support.images import build_image, sh
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged]
NODES = ("node-s", "node-t")
IMAGE_FILE = "hello from an OCI template\n"  # /www/index.html in the image (tests/_support/images)
GONE_TIMEOUT_S = 60.0

Cluster = tuple[dict[str, NodeProcess], ServerProcess, str, str, Path]


@pytest.fixture(scope="module")
def shared_cluster(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module's tests (~10 s to start each): each test ends with its
    sandboxes and templates deleted and checks that nothing leaked; ``cluster`` undrains."""
    tmp_path = tmp_path_factory.mktemp("templates-cluster")
    imports = tmp_path / "imports"  # every node's import directory: whichever imports finds the file
    imports.mkdir()
    # info: the access log shows each internal archive a node serves
    node_args = ("--import-dir", str(imports), "--log-level", "info")
    with two_nodes_and_replica(
        postgres, tmp_path, NODES, node_args=node_args, first_index=28, replica_tag="y", org_id="org-tpl"
    ) as c:
        yield c.nodes, c.replica, c.url, c.database, imports


@pytest.fixture
def cluster(shared_cluster: Cluster, postgres: PostgresServer) -> Cluster:
    """The shared cluster with both nodes up and taking sandboxes (a test before drained them)."""
    nodes, _, url, database, _ = shared_cluster
    for node_id, node in nodes.items():
        assert node.proc is not None and node.proc.poll() is None, f"{node_id} is not running"
        _node_cli(url, "undrain", node_id)
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while {_state_of(postgres, database, n) for n in NODES} != {"up"}:
        assert time.monotonic() < deadline, {n: _state_of(postgres, database, n) for n in NODES}
        time.sleep(0.5)
    return shared_cluster


def _node_of(postgres: PostgresServer, database: str, sandbox_id: str) -> str:
    return postgres.psql(f"SELECT node_id FROM sandboxes WHERE id = '{sandbox_id}'", database)


def _import(http: httpx.Client, name: str, uri: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The import with streamed progress: the events, then the last line."""
    headers = {"accept": "application/x-ndjson"}
    with http.stream("POST", "/v1/template", json={"name": name, "uri": uri}, headers=headers) as answer:
        assert answer.status_code == 201, answer.read()
        lines = [json.loads(line) for line in answer.iter_lines() if line.strip()]
    return lines[:-1], lines[-1]


def _web_archive(tmp_path: Path, imports: Path) -> str:
    """The test image as a local OCI archive in every node's import directory: its import URI."""
    layout = build_image(tmp_path / "image")
    sh("tar", "-C", layout, "-cf", imports / "web.tar", ".")
    return f"oci-archive:{imports / 'web.tar'}"


def _node_cli(url: str, command: str, node_id: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "atoll.cli.main", "node", command, node_id, "--database-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _drain(url: str, node_id: str) -> None:
    _node_cli(url, "drain", node_id)


def _archives_served(node: NodeProcess, template_id: str) -> int:
    return len(re.findall(rf"GET /v1/internal/template/{template_id}/archive", node.log_path.read_text()))


def test_a_template_imported_through_a_replica_runs_on_every_node(
    cluster: Cluster, postgres: PostgresServer, tmp_path: Path
) -> None:
    nodes, replica, url, database, imports = cluster
    web = _web_archive(tmp_path, imports)
    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=300) as http:
        events, last = _import(http, "web", web)
        assert events and all({"phase", "message"} <= set(e) for e in events), events
        assert "template" in last, last
        template = last["template"]
        tid = template["id"]
        assert template["state"] == "ready" and template["name"] == "web"
        # imported by a node, not the replica (which runs no sandboxes)
        holding = [n for n, p in nodes.items() if (p.data_dir / "user-templates" / tid / "rootfs").is_dir()]
        assert len(holding) == 1, holding
        importer = holding[0]
        other = next(n for n in NODES if n != importer)
        assert not (replica.data_dir / "user-templates" / tid).exists()
        # rows are shared: any replica lists, reads and renames it
        assert tid in [t["id"] for t in http.get("/v1/templates").json()["items"]]
        assert http.get(f"/v1/template/{tid}").json()["state"] == "ready"
        assert http.patch(f"/v1/template/{tid}", json={"name": "web2"}).status_code == 204

        # placement prefers the node that has it cached
        first = api.create(http, template_name="web2")["id"]
        assert _node_of(postgres, database, first) == importer

        _drain(url, importer)  # now only the other node takes sandboxes: it must copy the files
        with ThreadPoolExecutor(2) as pool:
            made = list(
                pool.map(lambda _: http.post("/v1/sandbox", json={"template_name": "web2"}), range(2))
            )
        assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
        second, third = (r.json()["id"] for r in made)
        assert {_node_of(postgres, database, s) for s in (second, third)} == {other}
        assert _archives_served(nodes[importer], tid) == 1, "the two creates did not share one copy"
        copy = nodes[other].data_dir / "user-templates" / tid
        assert (copy / "rootfs" / "www" / "index.html").read_text() == IMAGE_FILE
        assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")], "a partial copy stayed"
        for sandbox in (first, second, third):
            assert api.run(http, sandbox, "cat /www/index.html")["stdout"] == IMAGE_FILE
        # the other node's heartbeat reports it cached now, by id
        cached = postgres.psql(f"SELECT templates FROM nodes WHERE id = '{other}'", database)
        assert tid in cached, cached

        # the internal paths are the cluster's own
        archive = f"{nodes[importer].own_url}/v1/internal/template/{tid}/archive"
        assert httpx.get(archive, timeout=30).status_code == 404
        assert httpx.get(archive, headers={"x-atoll-cluster-token": "x" * 32}, timeout=30).status_code == 404

        # in use: refused; once its sandboxes are gone, deleted everywhere
        assert http.delete(f"/v1/template/{tid}").status_code == 409
        for sandbox in (first, second, third):
            api.delete(http, sandbox)
        assert http.delete(f"/v1/template/{tid}").status_code == 204
        copies = [p.data_dir / "user-templates" / tid for p in nodes.values()]
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while any(c.exists() for c in copies) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(c.exists() for c in copies), "a node kept its copy of the deleted template"
        refused = http.post("/v1/sandbox", json={"template_name": "web2"})
        assert refused.status_code == 400, refused.text

        _drain(url, other)  # no node up to import: 503 naming it, nothing imported
        answer = http.post("/v1/template", json={"name": "none", "uri": web})
        assert answer.status_code == 503, answer.text
        assert answer.headers.get("retry-after") and "no node" in answer.json()["message"]
        assert [t["name"] for t in http.get("/v1/templates").json()["items"] if not t["is_system"]] == []
    for node in nodes.values():
        assert_no_leaks(node)


def _state_of(postgres: PostgresServer, database: str, node_id: str) -> str:
    return postgres.psql(f"SELECT state FROM nodes WHERE id = '{node_id}'", database)


def test_a_template_no_live_node_holds_is_503_until_its_holder_is_back(
    cluster: Cluster, postgres: PostgresServer, tmp_path: Path
) -> None:
    nodes, replica, url, database, imports = cluster
    web = _web_archive(tmp_path, imports)
    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=300) as http:
        _, last = _import(http, "web", web)
        tid = last["template"]["id"]
        importer = next(n for n, p in nodes.items() if (p.data_dir / "user-templates" / tid).is_dir())
        other = next(n for n in NODES if n != importer)
        _drain(url, importer)
        nodes[importer].kill9()  # the only holder dies: the other node cannot copy the files
        cut = http.post("/v1/sandbox", json={"template_name": "web"})
        assert cut.status_code == 503 and cut.headers.get("retry-after"), cut.text
        assert importer in cut.json()["message"], cut.text
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while _state_of(postgres, database, importer) != "down" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _state_of(postgres, database, importer) == "down"
        none = http.post("/v1/sandbox", json={"template_name": "web"})
        assert none.status_code == 503 and none.headers.get("retry-after"), none.text
        assert "no live node" in none.json()["message"], none.text
        assert not list((nodes[other].data_dir / "user-templates").iterdir()), "a partial copy stayed"

        nodes[importer].start()  # back, still draining: the other node copies from it
        sandbox = api.create(http, template_name="web")["id"]
        assert _node_of(postgres, database, sandbox) == other
        assert api.run(http, sandbox, "cat /www/index.html")["stdout"] == IMAGE_FILE
        api.delete(http, sandbox)
        assert http.delete(f"/v1/template/{tid}").status_code == 204
    for node in nodes.values():
        assert_no_leaks(node)


def test_a_snapshot_of_a_template_sandbox_restores_on_a_node_without_the_template(
    cluster: Cluster, postgres: PostgresServer, tmp_path: Path
) -> None:
    nodes, replica, url, database, imports = cluster
    web = _web_archive(tmp_path, imports)
    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=300) as http:
        if not http.get("/v1/health").json().get("checkpoint"):
            pytest.skip("snapshots need a checkpointing runtime on this host")
        _, last = _import(http, "web", web)
        tid = last["template"]["id"]
        sandbox = api.create(http, template_name="web")["id"]
        importer = _node_of(postgres, database, sandbox)
        other = next(n for n in NODES if n != importer)
        assert api.run(http, sandbox, "echo kept > /home/app/kept")["exit_code"] == 0
        made = http.post(f"/v1/sandbox/{sandbox}/snapshot/create", json={"name": "web-snap"})
        assert made.status_code == 201, made.text
        assert not (nodes[other].data_dir / "user-templates" / tid).exists()

        _drain(url, importer)  # the restore is placed on the other node: template and snapshot copied
        restored = http.post("/v1/snapshot/restore", json={"snapshot_name": "web-snap"})
        assert restored.status_code == 201, restored.text
        fork = restored.json()["id"]
        assert _node_of(postgres, database, fork) == other
        assert (nodes[other].data_dir / "user-templates" / tid / "rootfs").is_dir()
        assert api.run(http, fork, "cat /www/index.html /home/app/kept")["stdout"] == IMAGE_FILE + "kept\n"

        for each in (fork, sandbox):
            api.delete(http, each)
        assert http.delete(f"/v1/template/{tid}").status_code == 409  # its snapshot needs it
        assert http.delete(f"/v1/snapshot/{made.json()['id']}").status_code == 204
        assert http.delete(f"/v1/template/{tid}").status_code == 204
    for node in nodes.values():
        assert_no_leaks(node)
