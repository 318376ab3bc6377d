"""Placement (``atoll.cluster.placement``) against the real databases: capacity with
over-commit, the preference for nodes with the template cached and a warm sandbox ready, an
organisation's sandboxes spread, a typed error (503 with Retry-After) when nothing has room, and
processes placing at once on PostgreSQL never overbooking a node."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._exceptions import CapacityError, ClusterCapacityExhausted
from atoll._states import State
from atoll.cluster.placement import (
    PROVISIONAL_TTL_S,
    Placement,
    PlacementPolicy,
    PlacementRequest,
    Placer,
    provisional_id,
)
from atoll.cluster.registry import DOWN, DRAINING, NodeRegistry, NodeReport
from atoll.server import errors
from atoll.server.settings import Settings
from atoll.store import db
from atoll.store.models import NodeRow, PlacementRow, SandboxRow, utcnow
from atoll.store.repo import Repository

DEBIAN = "system/debian:bookworm"
PYTHON = "system/code-interpreter:v0.1.0"
POLICY = PlacementPolicy(cpu_overcommit=4, memory_overcommit=1)


async def _node(
    sessions: async_sessionmaker[AsyncSession],
    node_id: str,
    *,
    cpus: int = 2,
    memory_mib: int = 4096,
    templates: tuple[str, ...] = (DEBIAN,),
    pools: dict[str, int] | None = None,
) -> None:
    report = NodeReport(
        vcpu_budget=cpus * 128, memory_mib_budget=memory_mib * 8, cpus=cpus, memory_mib=memory_mib,
        templates=list(templates), pools=pools or {},
    )  # fmt: skip
    await NodeRegistry(sessions).register(
        node_id, role="node", hostname=node_id, address=f"http://{node_id}:7700", report=report
    )


def _request(
    org: str = "org-a", *, vcpu: int = 1, memory_mib: int = 256, template: str = DEBIAN
) -> PlacementRequest:
    return PlacementRequest("sbx_" + uuid.uuid4().hex[:16], org, template, vcpu, memory_mib)


async def _reserved(sessions: async_sessionmaker[AsyncSession]) -> dict[str, tuple[int, int]]:
    async with sessions() as s:
        rows = (await s.execute(select(NodeRow.id, NodeRow.vcpu_reserved, NodeRow.memory_mib_reserved))).all()
    return {r.id: (r.vcpu_reserved, r.memory_mib_reserved) for r in rows}


async def test_capacity_with_overcommit(sessions: async_sessionmaker[AsyncSession]) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    await _node(sessions, "n1", cpus=2, memory_mib=4096)  # 8 vCPU at 4x, 4096 MiB at 1x
    placed = [await placer.place(_request(f"org-{i}")) for i in range(8)]
    assert {p.node_id for p in placed} == {"n1"} and placed[0].address == "http://n1:7700"
    with pytest.raises(ClusterCapacityExhausted) as full:
        await placer.place(_request())  # a 9th vCPU: over 2 CPUs x 4
    assert full.value.retry_after_s > 0 and "no node of the cluster has room" in full.value.message
    assert await _reserved(sessions) == {"n1": (8, 8 * 256)}

    assert await placer.release(placed[0].sandbox_id)
    assert not await placer.release(placed[0].sandbox_id)  # once
    assert await _reserved(sessions) == {"n1": (7, 7 * 256)}
    await placer.place(_request())  # its room is free again
    for p in placed[1:]:
        await placer.release(p.sandbox_id)

    # memory at 1x: 4096 MiB hold four sandboxes of 1024 MiB, whatever the vCPUs left
    big = [await placer.place(_request(memory_mib=1024, vcpu=0)) for _ in range(3)]
    with pytest.raises(ClusterCapacityExhausted):
        await placer.place(_request(memory_mib=1024 + 256))
    await placer.place(_request(memory_mib=1024 - 256, vcpu=0))
    assert await _reserved(sessions) == {"n1": (1, 4096)}
    assert len(big) == 3

    # a node that is down, or reports no host capacity, takes nothing
    await _node(sessions, "down")
    await _node(sessions, "unsized", cpus=0, memory_mib=0)
    async with sessions.begin() as s:
        await s.execute(update(NodeRow).where(NodeRow.id == "down").values(state=DOWN))
    with pytest.raises(ClusterCapacityExhausted):
        await placer.place(_request(vcpu=1, memory_mib=1))
    # a heartbeat reports the node's own view; it never resets what placement reserved
    assert await NodeRegistry(sessions).heartbeat("n1", NodeReport(1, 1, cpus=2, memory_mib=4096))
    assert (await _reserved(sessions))["n1"] == (1, 4096)


async def test_prefers_the_template_cached_and_a_warm_sandbox(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    await _node(sessions, "bare", templates=())
    await _node(sessions, "cached", templates=(DEBIAN, PYTHON))
    await _node(sessions, "warm", templates=(DEBIAN, PYTHON), pools={DEBIAN: 2})
    # different organisations (no spread at stake): the warm node, even as it fills
    first = [(await placer.place(_request(f"org-{i}"))).node_id for i in range(6)]
    assert first == ["warm"] * 6
    # no warm sandbox of this template anywhere: a node that has it cached, the least loaded
    assert (await placer.place(_request(template=PYTHON))).node_id == "cached"
    # cached nowhere: all equal but their load
    assert (await placer.place(_request(template="org-x/custom:v1"))).node_id == "bare"
    # the warm node full: the next best
    for i in range(2):
        assert (await placer.place(_request(f"fill-{i}"))).node_id == "warm"
    assert (await placer.place(_request("org-y"))).node_id == "cached"


async def test_spreads_an_organisations_sandboxes(sessions: async_sessionmaker[AsyncSession]) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    for name in ("n1", "n2", "n3"):
        await _node(sessions, name, cpus=4)
    spread = Counter([(await placer.place(_request("org-a"))).node_id for _ in range(9)])
    assert spread == {"n1": 3, "n2": 3, "n3": 3}
    # another organisation spreads by its own sandboxes, whatever org-a has where
    other = [(await placer.place(_request("org-b"))).node_id for _ in range(3)]
    assert sorted(other) == ["n1", "n2", "n3"]

    # a node without the template: taken only once each node with it holds 4 more of the org's
    await _node(sessions, "n4", cpus=4, templates=())
    order = [(await placer.place(_request("org-c"))).node_id for _ in range(15)]
    assert Counter(order[:12]) == {"n1": 4, "n2": 4, "n3": 4}  # 4 each first, then the pull
    assert order[12] == "n4" and order[13:].count("n4") == 0, order


async def test_a_failed_create_releases_its_room(sessions: async_sessionmaker[AsyncSession]) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    await _node(sessions, "n1", cpus=1)
    request = _request(vcpu=4)
    with pytest.raises(RuntimeError, match="boot failed"):
        async with placer.reservation(request) as placement:
            assert isinstance(placement, Placement) and placement.node_id == "n1"
            assert await _reserved(sessions) == {"n1": (4, 256)}
            raise RuntimeError("boot failed")
    assert await _reserved(sessions) == {"n1": (0, 0)}
    async with placer.reservation(request):
        pass  # made: the room stays held until the sandbox is deleted
    assert await _reserved(sessions) == {"n1": (4, 256)}


async def test_a_moved_sandboxs_room_is_transferred_in_one_step(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    await _node(sessions, "n1")
    moved = _request()
    assert (await placer.place(moved)).node_id == "n1"
    await _node(sessions, "n2")
    assert await NodeRegistry(sessions).set_draining("n1", True) == DRAINING
    pending = provisional_id()  # its room on the node it moves to (sandbox_move)
    target = await placer.place(PlacementRequest(pending, "org-a", DEBIAN, 1, 256))
    assert target.node_id == "n2"
    assert await _reserved(sessions) == {"n1": (1, 256), "n2": (1, 256)}

    assert await placer.transfer(pending, moved.sandbox_id)
    assert await _reserved(sessions) == {"n1": (0, 0), "n2": (1, 256)}
    async with sessions() as s:
        placed = (await s.execute(select(PlacementRow.sandbox_id, PlacementRow.node_id))).all()
    assert [tuple(row) for row in placed] == [(moved.sandbox_id, "n2")]
    # nothing under the provisional id any more: nothing changes (the room stays held)
    assert not await placer.transfer(pending, moved.sandbox_id)
    assert await _reserved(sessions) == {"n1": (0, 0), "n2": (1, 256)}


async def test_ended_sandboxes_and_stale_provisional_placements_give_their_room_back(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    placer = Placer(sessions.kw["bind"], POLICY)
    await _node(sessions, "n1", cpus=4)
    await Repository(sessions).ensure_org("org-a", "a")
    rows = {state: _sandbox(state) for state in (State.RUNNING, State.STOPPED, State.DELETED, State.FAILED)}
    async with sessions.begin() as s:
        s.add_all(rows.values())
    for row in rows.values():
        await placer.place(PlacementRequest(row.id, "org-a", DEBIAN, 1, 256))
    # a create placed and named by its node, one still on its way, one whose replica died
    named, fresh, stale = provisional_id(), provisional_id(), provisional_id()
    for pending in (named, fresh, stale):
        await placer.place(PlacementRequest(pending, "org-a", DEBIAN, 1, 256))
    assert await placer.rename(named, rows[State.RUNNING].id + "-2")
    assert not await placer.rename("pending-unknown", "sbx-x")
    async with sessions.begin() as s:
        old = utcnow() - dt.timedelta(seconds=PROVISIONAL_TTL_S + 1)
        await s.execute(update(PlacementRow).where(PlacementRow.sandbox_id == stale).values(placed_at=old))
    assert await _reserved(sessions) == {"n1": (7, 7 * 256)}

    assert await placer.release_ended() == 3  # deleted, failed, the stale provisional one
    async with sessions() as s:
        kept = set((await s.scalars(select(PlacementRow.sandbox_id))).all())
    assert kept == {rows[State.RUNNING].id, rows[State.STOPPED].id, rows[State.RUNNING].id + "-2", fresh}
    assert await _reserved(sessions) == {"n1": (4, 4 * 256)}
    assert await placer.release_ended() == 0  # once


def _sandbox(state: State) -> SandboxRow:
    return SandboxRow(
        id="sbx" + uuid.uuid4().hex[:16], org_id="org-a", template_id="tpl", template_name=DEBIAN,
        runtime="crun", vcpu=1, memory=256, disk=1024, timeout=600, state=state, node_id="n1",
    )  # fmt: skip


async def test_no_room_anywhere_is_503_with_retry_after() -> None:
    failure = ClusterCapacityExhausted("no node of the cluster has room", retry_after_s=7)
    mapped = errors.http_error(failure)
    assert isinstance(mapped, CapacityError) and mapped.status_code == 503 and mapped.retry_after == 7

    app = FastAPI()
    errors.install(app)

    @app.post("/v1/sandbox")
    async def create() -> None:
        raise failure

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        answer = await client.post("/v1/sandbox")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "7"
    assert answer.json() == {"message": "no node of the cluster has room"}


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_concurrent_placers_never_overbook(
    store_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """200 placements (and some releases) from 8 connections at once, as 8 API replicas would,
    on 3 small nodes: no node's reservations ever pass its budget, and they add up to exactly
    the placements' rows."""
    budgets = {"n1": (1, 1024), "n2": (1, 2048), "n3": (2, 1024)}  # CPUs, MiB
    for name, (cpus, memory_mib) in budgets.items():
        await _node(sessions, name, cpus=cpus, memory_mib=memory_mib)
    engines = [db.make_engine(store_url) for _ in range(8)]
    placed: list[Placement] = []
    refused = 0

    async def replica(index: int) -> None:
        nonlocal refused
        placer = Placer(engines[index], POLICY)
        for i in range(25):
            request = _request(f"org-{(index + i) % 3}", vcpu=1 + i % 2, memory_mib=64 * (1 + i % 4))
            try:
                placement = await placer.place(request)
            except ClusterCapacityExhausted:
                refused += 1
                continue
            if i % 3 == 0:  # some sandboxes end while others are placed
                assert await placer.release(placement.sandbox_id)
            else:
                placed.append(placement)

    try:
        await asyncio.gather(*(replica(i) for i in range(8)))
    finally:
        for engine in engines:
            await engine.dispose()
    async with sessions() as s:
        rows = (
            await s.execute(
                select(
                    PlacementRow.node_id, func.sum(PlacementRow.vcpu), func.sum(PlacementRow.memory_mib)
                ).group_by(PlacementRow.node_id)
            )
        ).all()
        held = {r[0]: (int(r[1]), int(r[2])) for r in rows}
        count = await s.scalar(select(func.count()).select_from(PlacementRow))
    reserved = await _reserved(sessions)
    assert count == len(placed) and refused > 0  # more was asked than fits
    for name, (cpus, memory_mib) in budgets.items():
        assert reserved[name] == held.get(name, (0, 0)), (name, reserved, held)
        assert reserved[name][0] <= cpus * 4 and reserved[name][1] <= memory_mib, (name, reserved)
    assert {p.node_id for p in placed} == set(budgets)  # racing placers spread, none starved


def test_the_policy_takes_the_hosts_overcommit_settings() -> None:
    policy = PlacementPolicy.from_settings(Settings(cpu_overcommit=4, memory_overcommit=1.5))
    assert (policy.cpu_overcommit, policy.memory_overcommit) == (4, 1.5)
