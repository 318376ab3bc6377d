"""The cluster's node table (``atoll.cluster.registry``) on both databases, and the advisory
lock that makes the liveness job a singleton (``atoll.cluster.leader``) on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from atoll._states import State
from atoll.cluster.leader import AdvisoryLeader
from atoll.cluster.registry import DOWN, UP, NodeRegistry, NodeReport
from atoll.store import db
from atoll.store.models import NodeRow, SandboxRow
from atoll.store.repo import Repository
from tests.store.test_repo import ORG, _row

REPORT = NodeReport(vcpu_budget=256, memory_mib_budget=65536, templates=["system/debian:bookworm"])


async def _register(registry: NodeRegistry, node_id: str) -> None:
    await registry.register(
        node_id, role="node", hostname="h", address=f"http://{node_id}:7700", report=REPORT
    )


async def _silence(sessions: async_sessionmaker[AsyncSession], node_id: str, seconds: float) -> None:
    """As if the node's last heartbeat was ``seconds`` ago."""
    async with sessions.begin() as s:
        when = (await s.get(NodeRow, node_id)).heartbeat_at - dt.timedelta(seconds=seconds)  # type: ignore[union-attr]
        await s.execute(update(NodeRow).where(NodeRow.id == node_id).values(heartbeat_at=when))


async def test_register_and_heartbeat(sessions: async_sessionmaker[AsyncSession]) -> None:
    registry = NodeRegistry(sessions)
    await _register(registry, "n1")
    await _register(registry, "n1")  # a restarted node registers again: one row
    first = await registry.get("n1")
    assert first is not None and first.state == UP and first.templates == ["system/debian:bookworm"]
    busy = NodeReport(vcpu_budget=256, memory_mib_budget=65536, vcpu_used=3, pools={"ready": 2})
    assert await registry.heartbeat("n1", busy)
    beat = await registry.get("n1")
    assert beat is not None and beat.vcpu_used == 3 and beat.pools == {"ready": 2}
    assert beat.heartbeat_at >= first.heartbeat_at
    assert not await registry.heartbeat("gone", busy)  # no row: the node registers again
    assert [n.id for n in await registry.nodes()] == ["n1"]


async def test_a_silent_node_is_marked_down_and_its_sandboxes_fail(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    registry = NodeRegistry(sessions)
    alive, dead = Repository(sessions, node_id="alive"), Repository(sessions, node_id="dead")
    await alive.ensure_org(ORG, ORG)
    for node in ("alive", "dead"):
        await _register(registry, node)
    running, paused, stopped = (
        _row(State.RUNNING),
        _row(State.PAUSED, pause_kind="freeze"),
        _row(State.STOPPED),
    )
    elsewhere = _row(State.RUNNING)
    for row in (running, paused, stopped):
        await dead.add_sandbox(row)
    await alive.add_sandbox(elsewhere)

    await _silence(sessions, "dead", 5)
    assert await registry.mark_silent_down(10) == []  # 5 s of silence is not 10
    await _silence(sessions, "dead", 6)
    [downed] = await registry.mark_silent_down(10)
    assert downed.node_id == "dead" and sorted(downed.failed_sandboxes) == sorted([running.id, paused.id])
    node = await registry.get("dead")
    assert node is not None and node.state == DOWN and "stopped heartbeating" in (node.state_reason or "")
    for row in (running, paused):
        failed = await alive.get_sandbox(row.id)
        assert failed is not None and failed.state == State.FAILED
        assert failed.state_reason == downed.reason
    assert (await alive.get_sandbox(stopped.id)).state == State.STOPPED  # type: ignore[union-attr]
    assert (await alive.get_sandbox(elsewhere.id)).state == State.RUNNING  # type: ignore[union-attr]
    assert (await registry.get("alive")).state == UP  # type: ignore[union-attr]
    assert await registry.mark_silent_down(10) == []  # once

    assert await registry.heartbeat("dead", REPORT)  # back: up again, its sandboxes stay failed
    assert (await registry.get("dead")).state == UP  # type: ignore[union-attr]
    assert (await alive.get_sandbox(running.id)).state == State.FAILED  # type: ignore[union-attr]


async def test_one_leader_at_a_time(engine: AsyncEngine, store_url: str) -> None:
    if not db.is_postgresql(store_url):
        assert await AdvisoryLeader(engine, "job").try_lead()  # one process: it always leads
        return
    other_process = db.make_engine(store_url)  # its own pool: another process's connections
    try:
        first, second = AdvisoryLeader(engine, "job"), AdvisoryLeader(other_process, "job")
        assert await first.try_lead()
        assert not await second.try_lead()
        assert await first.try_lead()  # still leads
        another_job = AdvisoryLeader(other_process, "another job")
        assert await another_job.try_lead()  # locks are per job
        await another_job.release()
        await first.release()
        assert await second.try_lead()
        assert not await first.try_lead()

        # the leader's connection dies (its process was killed): the lock goes with it
        async with engine.connect() as admin:
            killed = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
            )
        assert killed >= 1
        # the lock goes when the backend has exited, which pg_terminate_backend only asks for
        deadline = time.monotonic() + 10
        while not await first.try_lead():
            assert time.monotonic() < deadline, "the killed leader's lock stayed"
            await asyncio.sleep(0.05)
        assert not await second.try_lead()  # it notices it lost the lead
        await first.release()
        await second.release()
    finally:
        await other_process.dispose()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_concurrent_markers_fail_each_sandbox_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Two processes marking at once (say, a leader that just lost its lock): one marks."""
    import asyncio

    registry = NodeRegistry(sessions)
    repo = Repository(sessions, node_id="dead")
    await repo.ensure_org(ORG, ORG)
    await _register(registry, "dead")
    for _ in range(20):
        await repo.add_sandbox(_row(State.RUNNING))
    await _silence(sessions, "dead", 60)
    results = await asyncio.gather(*(registry.mark_silent_down(10) for _ in range(4)))
    marked = [d for result in results for d in result]
    assert len(marked) == 1 and len(marked[0].failed_sandboxes) == 20
    async with sessions() as s:
        states = set(
            (await s.scalars(SandboxRow.__table__.select().with_only_columns(SandboxRow.state))).all()
        )
    assert states == {State.FAILED}
