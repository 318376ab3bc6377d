"""A cluster for the suites (``ATOLL_TEST_CLUSTER=1``, issue #22): the session's server becomes a
node (``atoll node run``, with the session's instance, interfaces and subnet, so every host-side
check looks at it) and an API replica (``atoll serve --role api``) beside it on the same
PostgreSQL database, which the tests' clients talk to (``base_url``). What a test asks of the
server's sandboxes thus goes through the replica's placement and forwarding to the node.

Sandbox URLs go to the replica's router too (``router_port``, ``router_url``, ``sandbox_host``
name the replica's), which sends them on to the node's router (``node_router_port``) with the
cluster token both share. As behind a load balancer, every process names the same public
sandbox domain (the replica's router), and trusts one CA: the replica starts with a copy of the
node's local CA (its router issues its own certificate from it), so the CA file the router tests
trust (``data_dir/tls/ca.pem``, the node's) and ``GET /v1/ca.pem`` through the replica are one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests._support.postgres import PostgresServer
from tests._support.server import SANDBOX_DOMAIN, ServerProcess, free_port, serving, side_server

ENABLED = os.environ.get("ATOLL_TEST_CLUSTER", "") == "1"
REPLICA_SUBNET_INDEX = 12  # a /24 of the session's subnet no side server of the suites takes
CLUSTER_TOKEN = "atoll-test-cluster-" + os.urandom(8).hex()  # given by environment, as in production


class NodeProcess(ServerProcess):
    """``atoll node run`` (the same options as ``atoll serve``, role node)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("serve")
        return [*argv[:at], "node", "run", *argv[at + 1 :]]


@dataclass
class TwoNodes:
    """Two nodes and an API replica on one PostgreSQL database, all with the same key."""

    nodes: dict[str, NodeProcess]
    replica: ServerProcess
    url: str
    database: str


@contextlib.contextmanager
def two_nodes_and_replica(
    postgres: PostgresServer,
    tmp_path: Path,
    node_ids: tuple[str, str],
    *,
    first_index: int,
    replica_tag: str,
    org_id: str,
    node_args: tuple[str, ...] = (),
) -> Iterator[TwoNodes]:
    """Side subnets ``first_index`` and the next two (nodes, then the replica); every process has
    the cluster token; ``node_args`` go to each node."""
    database = "t_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(database)
    common = ("--database-url", url, "--heartbeat-interval-s", "2")
    env = {"ATOLL_CLUSTER_TOKEN": CLUSTER_TOKEN}
    nodes = {
        node_id: side_node(
            tmp_path / node_id,
            node_id[-1],
            first_index + index,
            extra_args=(*common, "--node-id", node_id, *node_args),
            extra_env=env,
        )
        for index, node_id in enumerate(node_ids)
    }
    replica = side_server(
        tmp_path / "api", replica_tag, first_index + 2, extra_args=(*common, "--role", "api"), extra_env=env
    )
    with serving(nodes[node_ids[0]]), serving(nodes[node_ids[1]]), serving(replica):
        key = create_key(url, org_id)
        for process in (*nodes.values(), replica):
            process.api_key = key
        yield TwoNodes(nodes, replica, url, database)


def side_node(
    data_dir: Path,
    tag: str,
    index: int,
    *,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> NodeProcess:
    """A node with host resources of its own, as ``side_server`` gives a second server."""
    like = side_server(data_dir, tag, index)
    own = {name: getattr(like, name) for name in ("data_dir", "instance", "iface_prefix", "subnet", "host")}
    return NodeProcess(**own, extra_args=extra_args, extra_env=extra_env or {})


@dataclass
class ClusterEntry(NodeProcess):
    """The node, with its clients sent to the replica (``base_url``, ``router_port``);
    ``own_url`` and ``node_router_port`` are the node's own."""

    replica: ServerProcess | None = field(default=None)
    node_router_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        super().__post_init__()
        token = {"ATOLL_CLUSTER_TOKEN": CLUSTER_TOKEN}
        self.extra_env = {**self.extra_env, **token}
        # URLs the node makes name the replica's router (``router_port`` is the replica's)
        self.extra_args = (*self.extra_args, "--sandbox-domain", f"{SANDBOX_DOMAIN}:{self.router_port}")
        if self.replica is None:
            self.replica = side_server(
                self.data_dir.parent / (self.data_dir.name + "-api"), "api", REPLICA_SUBNET_INDEX,
                database_url=self.database_url, router_port=self.router_port, extra_env=token,
                extra_args=("--role", "api"),
            )  # fmt: skip

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--router-port") + 1] = str(self.node_router_port)  # the node's own router
        return argv

    @property
    def base_url(self) -> str:
        assert self.replica is not None
        return self.replica.own_url

    def start(self, timeout: float = 120.0) -> None:
        super().start(timeout)
        assert self.replica is not None
        if self.replica.proc is None or self.replica.proc.poll() is not None:
            self._share_ca(self.replica.data_dir / "tls")
            self.replica.start(timeout)

    def _share_ca(self, into: Path) -> None:
        """The node's local CA (made at its start) for the replica, which reuses a CA it finds."""
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, mode in (("ca.pem", 0o644), ("ca.key", 0o600)):
            shutil.copyfile(self.data_dir / "tls" / name, into / name)
            (into / name).chmod(mode)

    def log_tail(self, lines: int = 60) -> str:
        """The node's log, then the replica's."""
        assert self.replica is not None
        return super().log_tail(lines) + "\n" + self.replica.log_tail(lines)

    def stop_all(self) -> None:
        """The replica and the node (``stop`` stops the node alone: a node restarting is what
        the tests' restarts mean; the replica stays up)."""
        assert self.replica is not None
        self.replica.stop()
        super().stop()
        shutil.rmtree(self.replica.data_dir, ignore_errors=True)


def session_server(data_dir: Path, database_url: str | None) -> ServerProcess:
    if not ENABLED:
        return ServerProcess(data_dir=data_dir, database_url=database_url)
    if database_url is None:
        raise RuntimeError("ATOLL_TEST_CLUSTER=1 needs ATOLL_TEST_DATABASE=postgresql")
    return ClusterEntry(data_dir=data_dir, database_url=database_url)


def create_key(database_url: str, org_id: str) -> str:
    """An API key of ``org_id`` minted straight into a cluster's shared store (``atoll keys create``)."""
    done = subprocess.run(
        [sys.executable, "-m", "atoll.cli.main", "keys", "create", "--org", org_id,
         "--database-url", database_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]
