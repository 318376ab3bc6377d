"""The cluster's node table: what each node offers, written by the node at start-up and on
every heartbeat, and the liveness rule that marks a silent node down.

Heartbeat times come from the database's clock (``clock_timestamp()`` on PostgreSQL), never a
node's: nodes' clocks may disagree, and "silent for 10 s" must mean the same to all of them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, String, and_, bindparam, case, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import functions

from atoll._states import State
from atoll.store.models import NodeRow, SandboxRow, SnapshotRow, utcnow

UP = "up"
DOWN = "down"
# up, but taking no new sandboxes (``atoll node drain``): what it runs goes on, and is reached
DRAINING = "draining"
ALIVE = (UP, DRAINING)
# a sandbox in one of these states holds nothing a dead node could take with it: left as it is
UNAFFECTED = (State.DELETED, State.STOPPED, State.FAILED)


@dataclass(frozen=True)
class NodeReport:
    """What a node tells the cluster about itself on each heartbeat."""

    vcpu_budget: int
    memory_mib_budget: int
    # the host itself, which placement over-commits (atoll.cluster.placement); 0: place nothing here
    cpus: int = 0
    memory_mib: int = 0
    vcpu_used: int = 0
    memory_mib_used: int = 0
    templates: list[str] = field(default_factory=list)  # cached on its host
    pools: dict[str, int] = field(default_factory=dict)  # warm sandboxes ready, by template
    health: dict[str, Any] = field(default_factory=dict)
    # where its sandbox router listens ("http://host:port"): the API replicas' routers send
    # sandbox URLs there (atoll.router._hop); None: it has none to offer (an API replica)
    router_address: str | None = None
    # its SSH gateway ("host:port") and public host key, for the API replicas' gateways
    # (atoll.ssh.relay); None: no gateway runs there (--ssh-port 0)
    ssh_address: str | None = None
    ssh_host_key: str | None = None


@dataclass(frozen=True)
class SandboxHome:
    """The node whose host runs a sandbox, as the cluster's API replicas forward to it."""

    node_id: str
    address: str
    up: bool  # up or draining: it runs what it ran, and answers
    draining: bool = False  # takes no new sandboxes (restores of its snapshots go elsewhere)
    router_address: str | None = None  # its sandbox router (None: a node that recorded none)
    ssh_address: str | None = None  # its SSH gateway, "host:port" (None: it runs none)
    ssh_host_key: str | None = None  # that gateway's public host key (OpenSSH format)


# a sandbox's node, as ``SandboxHome`` names it
_HOMES = select(
    NodeRow.id,
    NodeRow.address,
    NodeRow.state,
    NodeRow.router_address,
    NodeRow.ssh_address,
    NodeRow.ssh_host_key,
).join(SandboxRow, SandboxRow.node_id == NodeRow.id)
_HOME_OF_SANDBOX = _HOMES.where(SandboxRow.id == bindparam("sandbox_id", type_=String))


def _home_from(found: Any) -> SandboxHome | None:
    """``found``: a row of ``_HOMES``, or None."""
    if found is None:
        return None
    return SandboxHome(
        found.id,
        found.address,
        found.state in ALIVE,
        found.state == DRAINING,
        found.router_address,
        found.ssh_address,
        found.ssh_host_key,
    )


@dataclass(frozen=True)
class DownedNode:
    node_id: str
    reason: str
    failed_sandboxes: list[str]


class NodeRegistry:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        if not isinstance(bind, AsyncEngine):
            raise TypeError("the node registry's sessions must be bound to an engine")
        self._engine = bind
        self._postgresql = bind.dialect.name == "postgresql"

    def _now(self) -> ColumnElement[dt.datetime] | dt.datetime:
        # SQLite (one host, one process) has no other clock to disagree with
        return functions.func.clock_timestamp() if self._postgresql else utcnow()

    async def register(
        self, node_id: str, *, role: str, hostname: str, address: str, report: NodeReport
    ) -> None:
        """Insert or refresh the node's row: up, heartbeating from now."""
        async with self.sessions.begin() as s:
            row = await s.get(NodeRow, node_id, with_for_update=self._postgresql)
            values = _report_values(report)
            if row is None:
                s.add(
                    NodeRow(
                        id=node_id, role=role, hostname=hostname, address=address, state=UP,
                        heartbeat_at=utcnow(), **values,
                    )
                )  # fmt: skip
                await s.flush()
            statement = update(NodeRow).where(NodeRow.id == node_id)
            await s.execute(
                statement.values(
                    role=role, hostname=hostname, address=address, state=_alive_again(),
                    state_reason=None, started_at=self._now(), heartbeat_at=self._now(), **values,
                )
            )  # fmt: skip

    async def heartbeat(self, node_id: str, report: NodeReport) -> bool:
        """Record that the node is alive; False when it has no row (deleted: register again).
        A node marked down that heartbeats again is up again; its sandboxes stay ``failed``
        (a node that restarts reconciles them at start-up)."""
        statement = (
            update(NodeRow)
            .where(NodeRow.id == node_id)
            .values(
                heartbeat_at=self._now(), state=_alive_again(), state_reason=None, **_report_values(report)
            )
        )
        async with self.sessions.begin() as s:
            result = await s.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def nodes(self) -> Sequence[NodeRow]:
        async with self.sessions() as s:
            return (await s.scalars(select(NodeRow).order_by(NodeRow.id))).all()

    async def sandbox_counts(self) -> dict[str, tuple[int, int]]:
        """Per node, the sandboxes it holds (any state but deleted) and how many of them are
        paused: what is left on a draining node (``atoll node list``)."""
        paused = functions.count().filter(SandboxRow.state == State.PAUSED)
        statement = (
            select(SandboxRow.node_id, functions.count(), paused)
            .where(SandboxRow.node_id.is_not(None), SandboxRow.state != State.DELETED)
            .group_by(SandboxRow.node_id)
        )
        async with self.sessions() as s:
            rows = (await s.execute(statement)).all()
        return {str(node_id): (int(total), int(held)) for node_id, total, held in rows}

    async def get(self, node_id: str) -> NodeRow | None:
        async with self.sessions() as s:
            return await s.get(NodeRow, node_id)

    async def home_of(self, sandbox_id: str) -> SandboxHome | None:
        """The node recorded as running the sandbox; None for an unknown sandbox, or one no
        node runs (recorded on one host, before the cluster)."""
        # every forwarded request asks this: a statement built once, on a bare connection
        # (0.38 ms here against 0.62 ms for an ORM session building it each time)
        async with self._engine.connect() as connection:
            found = (await connection.execute(_HOME_OF_SANDBOX, {"sandbox_id": sandbox_id})).first()
        return _home_from(found)

    async def home_of_snapshot(
        self, *, snapshot_id: str | None = None, org_id: str | None = None, name: str | None = None
    ) -> SandboxHome | None:
        """The node holding a snapshot's files (its source sandbox's node), by id or by the
        organisation's name for it."""
        if snapshot_id is not None:
            which = SnapshotRow.id == snapshot_id
        else:
            which = and_(SnapshotRow.org_id == org_id, SnapshotRow.name == name)
        source = select(SnapshotRow.source_sandbox_id).where(which).scalar_subquery()
        return await self._home(SandboxRow.id == source)

    async def snapshot_shape(self, org_id: str, name: str) -> tuple[str, int, int] | None:
        """The template, vCPUs and MiB a restore of the organisation's snapshot asks for."""
        statement = select(SnapshotRow.template_name, SnapshotRow.vcpu, SnapshotRow.memory).where(
            SnapshotRow.org_id == org_id, SnapshotRow.name == name
        )
        async with self.sessions() as s:
            found = (await s.execute(statement)).first()
        return None if found is None else (found[0], found[1], found[2])

    async def _home(self, sandbox: ColumnElement[bool]) -> SandboxHome | None:
        async with self.sessions() as s:
            return _home_from((await s.execute(_HOMES.where(sandbox))).first())

    async def set_draining(self, node_id: str, draining: bool) -> str | None:
        """Drain the node (no new sandboxes placed on it; what it runs goes on) or take it back;
        a node that is down now comes back so. Its state afterwards; None when it is unknown."""
        alive_state = DRAINING if draining else UP
        statement = (
            update(NodeRow)
            .where(NodeRow.id == node_id)
            .values(
                drain_requested=draining,
                state=case((NodeRow.state.in_(ALIVE), alive_state), else_=NodeRow.state),
            )
            .returning(NodeRow.state)
        )
        async with self.sessions.begin() as s:
            return (await s.scalars(statement)).first()

    async def mark_silent_down(self, down_after_s: float) -> list[DownedNode]:
        """Mark every up node silent for ``down_after_s`` down, and its sandboxes that held
        processes or memory there ``failed`` with the reason, in one transaction (so no reader
        sees the node down and its sandboxes still ``running``)."""
        cutoff = self._now() - dt.timedelta(seconds=down_after_s)
        downed: list[DownedNode] = []
        async with self.sessions.begin() as s:
            silent = select(NodeRow).where(NodeRow.state.in_(ALIVE), NodeRow.heartbeat_at < cutoff)
            if self._postgresql:  # another process marking at once waits, then finds them down
                silent = silent.with_for_update(skip_locked=True)
            for node in (await s.scalars(silent)).all():
                last = node.heartbeat_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                reason = f"node {node.id} stopped heartbeating (last heartbeat {last})"
                node.state = DOWN
                node.state_reason = reason
                failed = await s.scalars(
                    update(SandboxRow)
                    .where(SandboxRow.node_id == node.id, SandboxRow.state.not_in(UNAFFECTED))
                    .values(state=State.FAILED, state_reason=reason, state_change_time=utcnow())
                    .returning(SandboxRow.id)
                )
                downed.append(DownedNode(node.id, reason, list(failed.all())))
        return downed


def _alive_again() -> ColumnElement[str]:
    """Up, or draining: neither a heartbeat, a restart nor a time marked down undoes a drain."""
    return case((NodeRow.drain_requested, DRAINING), else_=UP)


def _report_values(report: NodeReport) -> dict[str, Any]:
    return {
        "vcpu_budget": report.vcpu_budget,
        "memory_mib_budget": report.memory_mib_budget,
        "cpus": report.cpus,
        "memory_mib": report.memory_mib,
        "vcpu_used": report.vcpu_used,
        "memory_mib_used": report.memory_mib_used,
        "templates": list(report.templates),
        "pools": dict(report.pools),
        "health": dict(report.health),
        "router_address": report.router_address,
        "ssh_address": report.ssh_address,
        "ssh_host_key": report.ssh_host_key,
    }
