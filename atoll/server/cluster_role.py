"""This process's part in a cluster (docs/cluster.md), from ``Settings.role``: on PostgreSQL a
node (role ``all`` or ``node``) registers its host and heartbeats, an API replica (``api``)
takes no sandboxes of its own, and every process competes for the liveness job (one leads it).
On SQLite (one host) none of it runs."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from atoll.cluster.heartbeat import Heartbeat
from atoll.cluster.leader import AdvisoryLeader
from atoll.cluster.liveness import LivenessMonitor
from atoll.cluster.placement import PlacementPolicy, Placer
from atoll.cluster.registry import ALIVE, NodeRegistry, NodeReport, SandboxHome
from atoll.server import snapshot_transfer
from atoll.server.capacity import Budget, Capacity, host_size
from atoll.server.manager import SandboxManager
from atoll.server.sandbox_move import DrainMover
from atoll.server.settings import Settings
from atoll.store.db import is_postgresql
from atoll.store.models import SandboxRow
from atoll.store.observed import ObservedRepository

NODE_ID_MAX = 64


def node_identity(settings: Settings) -> str | None:
    """The id this process's sandboxes are recorded under; None on one host (SQLite)."""
    if not is_postgresql(settings.db_url):
        return None
    if settings.node_id:
        return settings.node_id
    prefix = "api-" if settings.role == "api" else ""
    return f"{prefix}{settings.instance}@{socket.gethostname()}"[:NODE_ID_MAX]


def _reachable(host: str) -> str:
    """A listening address as others name it: a wildcard is this host's name, IPv6 in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def node_address(settings: Settings) -> str:
    if settings.node_address:
        return settings.node_address
    return f"http://{_reachable(settings.host)}:{settings.port}"


def node_router_address(settings: Settings) -> str:
    """Where the API replicas' routers reach this node's sandbox router (plain HTTP: its listener
    takes both): the setting, else the first address the router listens on."""
    if settings.node_router_address:
        return settings.node_router_address
    return f"http://{_reachable(settings.router_hosts[0])}:{settings.router_port}"


def node_ssh_address(settings: Settings) -> str | None:
    """Where the API replicas' SSH gateways reach this node's ("host:port"), None without one."""
    if not settings.ssh_port:
        return None
    return f"{_reachable(settings.ssh_host)}:{settings.ssh_port}"


class RouterHomes:
    """Where the sandbox router finds a sandbox another node runs (``atoll.router.SandboxHomes``):
    only a sandbox recorded under another node than this process costs a look-up."""

    def __init__(self, registry: NodeRegistry, node_id: str) -> None:
        self.registry = registry
        self.node_id = node_id

    async def remote_home(self, row: SandboxRow) -> SandboxHome | None:
        if row.node_id is None or row.node_id == self.node_id:
            return None
        home = await self.registry.home_of(row.id)
        # its node's row is gone (removed from the cluster): as unreachable as a down node
        return home if home is not None else SandboxHome(row.node_id, "", up=False)


def router_homes(settings: Settings, repo: ObservedRepository) -> RouterHomes | None:
    """What the sandbox router needs to reach other nodes' sandboxes; None on one host (SQLite)."""
    node_id = node_identity(settings)
    return None if node_id is None else RouterHomes(NodeRegistry(repo.sessions), node_id)


class ClusterRole:
    def __init__(
        self,
        heartbeat: Heartbeat | None,
        liveness: LivenessMonitor | None,
        *,
        node_id: str | None = None,
        registry: NodeRegistry | None = None,
        placer: Placer | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.node_id = node_id
        self.registry = registry
        self.placer = placer  # what an API replica places creates with (atoll.server.forward)

    async def close(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.close()
        if self.liveness is not None:
            await self.liveness.close()


def snapshot_copies_dropper(
    settings: Settings, cluster: ClusterRole
) -> Callable[[str], Awaitable[None]] | None:
    """What a node does after deleting a snapshot: the other nodes drop their copies of it (made
    by restores moved off a draining node). None without a cluster token (no copies are made)."""
    registry, token = cluster.registry, settings.cluster_token
    if registry is None or token is None:
        return None

    async def drop(snapshot_id: str) -> None:
        others = [n.address for n in await registry.nodes() if n.id != cluster.node_id and n.state in ALIVE]
        await snapshot_transfer.drop_copies(others, token, snapshot_id)

    return drop


def drain_mover(settings: Settings, cluster: ClusterRole, manager: SandboxManager) -> DrainMover | None:
    """A node's job of moving its paused sandboxes away while it is draining; None on an API
    replica, on one host, and without the cluster token (the target copies the files with it)."""
    registry, placer, node_id = cluster.registry, cluster.placer, cluster.node_id
    token = settings.cluster_token
    if settings.role == "api" or registry is None or placer is None or node_id is None or token is None:
        return None
    return DrainMover(
        manager=manager, registry=registry, placer=placer, node_id=node_id,
        address=node_address(settings), token=token, retry_after_s=settings.drain_retry_after_s,
    )  # fmt: skip


async def start(
    settings: Settings,
    engine: AsyncEngine,
    repo: ObservedRepository,
    capacity: Capacity,
    *,
    template_names: Callable[[], list[str]],
    warm_ready: Callable[[], dict[str, int]],
    runtime: tuple[str, bool] = ("", False),
    ssh_host_key: str | None = None,
) -> ClusterRole:
    """Join the cluster (nothing on SQLite). ``template_names`` and ``warm_ready`` tell each
    heartbeat what the host has cached and how many warm sandboxes of each template wait,
    ``runtime`` its default runtime's name and whether it checkpoints;
    ``ssh_host_key`` is the SSH gateway's public key, which replicas pin (None: no gateway)."""
    node_id = node_identity(settings)
    if node_id is None:
        return ClusterRole(None, None)
    registry = NodeRegistry(repo.sessions)
    placer = Placer(engine, PlacementPolicy.from_settings(settings))
    heartbeat = None
    if settings.role == "api":
        # an API replica runs no sandbox itself: it places creates on nodes and forwards them
        capacity.budget = Budget(vcpu=0, memory_mib=0)
    else:
        cpus, memory_mib = host_size()  # the host itself: placement applies the cluster's over-commit
        router_address = node_router_address(settings)
        ssh_address = node_ssh_address(settings) if ssh_host_key else None

        async def report() -> NodeReport:
            used = await capacity.report()
            return NodeReport(
                vcpu_budget=used["vcpu_budget"],
                memory_mib_budget=used["memory_mib_budget"],
                vcpu_used=used["vcpu_used"],
                memory_mib_used=used["memory_mib_used"],
                cpus=cpus,
                memory_mib=memory_mib,
                templates=template_names(),
                pools=warm_ready(),
                # what an API replica's /v1/health says of the cluster (runtime_of_nodes)
                health={"status": "ok", "runtime": runtime[0], "checkpoint": runtime[1]},
                router_address=router_address,
                ssh_address=ssh_address,
                ssh_host_key=ssh_host_key if ssh_address else None,
            )

        heartbeat = Heartbeat(
            registry, node_id, role=settings.role, hostname=socket.gethostname(),
            address=node_address(settings), report=report, interval_s=settings.heartbeat_interval_s,
        )  # fmt: skip
        await heartbeat.start()
    liveness = LivenessMonitor(
        registry,
        AdvisoryLeader(engine, "liveness"),
        down_after_s=settings.node_down_after_s,
        on_failed=repo.changed,
        placer=placer,
    )
    liveness.start()
    return ClusterRole(heartbeat, liveness, node_id=node_id, registry=registry, placer=placer)


async def runtime_of_nodes(registry: NodeRegistry) -> tuple[str, bool]:
    """What an API replica, which runs no sandbox, reports as its runtime: the live nodes' one
    (``mixed`` when they differ, ``none`` with none live), and whether every live node checkpoints
    (pause to disk and snapshots work whichever node a sandbox lands on)."""
    health = [n.health or {} for n in await registry.nodes() if n.state in ALIVE]
    names = {str(h.get("runtime") or "") for h in health}
    name = "none" if not names else names.pop() if len(names) == 1 else "mixed"
    return name, bool(health) and all(h.get("checkpoint") is True for h in health)
