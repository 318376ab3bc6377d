"""An API replica (``atoll serve --role api``) runs no sandbox, so it prepares nothing on its
host and needs no privilege (issue #22). Every replica of the tests runs so (tests/_support/
server.py): as root with every capability dropped and ``no_new_privs``, as the API Deployment's
securityContext has it, and with an empty templates directory. Here, beside one node on
PostgreSQL: that it really is so, that it made nothing of its own on the host, that templates
(the node's), creates and execs go through it, and that with the node killed it still answers
for the node's failed sandbox (a delete releases nothing on the replica's host; the node, back,
removes what it held) and refuses what needs a node (503, or 401 to a client without a key)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.templates.debian import TEMPLATE_ID
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME
from tests._support import api
from tests._support.cluster import create_key, side_node
from tests._support.leaks import assert_no_leaks, host_view
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess, serving, side_server

pytestmark = [pytest.mark.privileged]
CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


@pytest.fixture
def node_and_replica(
    postgres: PostgresServer, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    url = postgres.create_database("t_" + uuid.uuid4().hex[:12])
    common = ("--database-url", url, "--heartbeat-interval-s", "2")
    node = side_node(tmp_path / "node", "g", 13, extra_args=(*common, "--node-id", "node-u"))
    replica = side_server(
        tmp_path / "api", "k", 14, extra_args=(*common, "--role", "api", "--node-id", "api-v")
    )
    assert replica.is_api_replica
    with serving(node), serving(replica):
        key = create_key(url, "org-unprivileged")
        for process in (node, replica):
            process.api_key = key
        yield node, replica


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def _assert_nothing_on_the_host(replica: ServerProcess) -> None:
    view = host_view(replica.data_dir, instance=replica.instance, iface_prefix=replica.iface_prefix)
    held = (view.containers, view.cgroups, view.mounts, view.dirs, view.netns, view.veths, view.helpers)
    assert not any(held), view
    table = subprocess.run(["nft", "list", "table", "inet", f"atoll_{replica.instance}"], capture_output=True)
    assert table.returncode != 0, "the replica made a firewall table"
    assert not Path("/run/atoll", replica.instance).exists()
    assert not (replica.data_dir / "no-templates").exists() or not any(
        (replica.data_dir / "no-templates").iterdir()
    )


def test_a_replica_without_privileges_serves_and_prepares_nothing_on_its_host(
    node_and_replica: tuple[ServerProcess, ServerProcess],
) -> None:
    node, replica = node_and_replica
    assert replica.proc is not None
    status = _status(replica.proc.pid)
    assert "atoll.cli.main" in Path(f"/proc/{replica.proc.pid}/cmdline").read_text()  # setpriv exec'd it
    assert {name: status[name] for name in CAPABILITY_SETS} == dict.fromkeys(CAPABILITY_SETS, "0" * 16)
    assert status["NoNewPrivs"] == "1"
    _assert_nothing_on_the_host(replica)

    with httpx.Client(base_url=replica.base_url, headers=replica.headers, timeout=120) as http:
        # its health names its node's runtime (it has none): what sandboxes made through it run on
        own, nodes = httpx.get(f"{node.base_url}/v1/health").json(), http.get("/v1/health").json()
        assert (nodes["runtime"], nodes["checkpoint"]) == (own["runtime"], own["checkpoint"]), nodes
        # its templates directory is empty: the system templates listed are the node's
        listed = http.get("/v1/templates")
        assert listed.status_code == 200, listed.text
        assert DEFAULT_TEMPLATE_NAME in {t["name"] for t in listed.json()["items"]}, listed.text
        one = http.get(f"/v1/template/{TEMPLATE_ID}")
        assert one.status_code == 200 and one.json()["is_system"] is True, one.text
        for refused in (http.delete(f"/v1/template/{TEMPLATE_ID}"),
                        http.patch(f"/v1/template/{TEMPLATE_ID}", json={"name": "mine"})):  # fmt: skip
            assert refused.status_code == 409 and "system templates" in refused.json()["message"], (
                refused.text
            )

        sandbox = api.create(http)["id"]
        assert api.run(http, sandbox, "echo through-an-unprivileged-replica")["stdout"] == (
            "through-an-unprivileged-replica\n"
        )
        _assert_nothing_on_the_host(replica)

        node.kill9()
        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/sandbox/{sandbox}").json())["state"] != "failed":
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
        # no node up to list templates: 503 to a client with a key, 401 to any other
        unlisted = http.get("/v1/templates")
        assert unlisted.status_code == 503 and unlisted.headers.get("retry-after"), unlisted.text
        for headers in ({"authorization": "Bearer atl_nope"}, {}):
            refused = httpx.get(f"{replica.base_url}/v1/templates", headers=headers, timeout=30)
            assert refused.status_code == 401, refused.text
        # answered by the replica itself, from the store: a clear refusal, then a delete
        refused = http.post(f"/v1/sandbox/{sandbox}/process/execute", json={"command": "true"})
        assert refused.status_code == 409, refused.text
        assert http.delete(f"/v1/sandbox/{sandbox}").status_code == 204
        assert http.get(f"/v1/sandbox/{sandbox}").status_code == 404
        _assert_nothing_on_the_host(replica)

    node.start()  # back: it reconciles, and removes what the deleted sandbox held on its host
    assert_no_leaks(node)
