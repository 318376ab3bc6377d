"""Draining a node (``atoll node drain``), on both databases: placement skips it while what it
runs goes on and is still reached; a heartbeat or a restart does not undo the drain; a drained
node that goes silent is marked down like any other and comes back draining; ``undrain`` takes it
back (a node down too)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._states import State
from atoll.cluster.placement import PlacementPolicy, PlacementRequest, Placer
from atoll.cluster.registry import DOWN, DRAINING, UP, NodeRegistry, NodeReport
from atoll.store.models import NodeRow, SandboxRow, utcnow
from atoll.store.repo import Repository

DEBIAN = "system/debian:bookworm"
REPORT = NodeReport(vcpu_budget=256, memory_mib_budget=32768, cpus=2, memory_mib=4096, templates=[DEBIAN])


def _request(number: int) -> PlacementRequest:
    return PlacementRequest(f"sbx-drain-{number}", "org-d", DEBIAN, 1, 256)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atoll.cli.main", "node", *args], capture_output=True, text=True, timeout=60
    )


async def test_a_drained_node_takes_no_new_sandboxes(
    sessions: async_sessionmaker[AsyncSession], store_url: str
) -> None:
    registry = NodeRegistry(sessions)
    for node_id in ("n1", "n2"):
        await registry.register(
            node_id, role="node", hostname=node_id, address=f"http://{node_id}", report=REPORT
        )
    placer = Placer(sessions.kw["bind"], PlacementPolicy(cpu_overcommit=4, memory_overcommit=1))

    drained = await asyncio.to_thread(_cli, "drain", "n1", "--database-url", store_url)
    assert drained.returncode == 0 and "node n1: draining" in drained.stdout, drained.stdout + drained.stderr
    assert {(await placer.place(_request(n))).node_id for n in range(6)} == {"n2"}
    # neither a heartbeat nor a restart (registering again) undoes it
    assert await registry.heartbeat("n1", REPORT)
    await registry.register("n1", role="node", hostname="n1", address="http://n1", report=REPORT)
    assert (await registry.get("n1")).state == DRAINING  # type: ignore[union-attr]
    assert (await placer.place(_request(6))).node_id == "n2"
    # what it runs is still reached (forwarded to it)
    await Repository(sessions).ensure_org("org-d", "d")
    async with sessions.begin() as s:
        s.add(SandboxRow(
            id="sbx-on-n1", org_id="org-d", template_id="t", template_name=DEBIAN, runtime="crun",
            vcpu=1, memory=256, disk=1024, timeout=600, state=State.RUNNING, node_id="n1",
        ))  # fmt: skip
    home = await registry.home_of("sbx-on-n1")
    assert home is not None and home.up and home.node_id == "n1"

    undrained = await asyncio.to_thread(_cli, "undrain", "n1", "--database-url", store_url)
    assert undrained.returncode == 0, undrained.stdout + undrained.stderr
    assert (await registry.get("n1")).state == UP  # type: ignore[union-attr]
    assert (await placer.place(_request(7))).node_id == "n1"  # the emptier node again

    # a drained node that goes silent is down, its sandboxes failed
    assert await registry.set_draining("n1", True)
    await _silence("n1", sessions)
    [downed] = await registry.mark_silent_down(10)
    assert downed.node_id == "n1" and downed.failed_sandboxes == ["sbx-on-n1"]
    assert (await registry.get("n1")).state == DOWN  # type: ignore[union-attr]
    # it comes back draining (the drain is the operator's, not the state's): placement skips it
    assert await registry.heartbeat("n1", REPORT)
    assert (await registry.get("n1")).state == DRAINING  # type: ignore[union-attr]
    assert await registry.heartbeat("n2", REPORT)
    assert (await placer.place(_request(8))).node_id == "n2"
    # a node drained or taken back while down comes back so
    await _silence("n1", sessions)
    await registry.mark_silent_down(10)
    undrained = await asyncio.to_thread(_cli, "undrain", "n1", "--database-url", store_url)
    assert undrained.returncode == 0 and "n1: down; up once it is back" in undrained.stdout, undrained.stdout
    assert (await registry.get("n1")).state == DOWN  # type: ignore[union-attr]
    await registry.register("n1", role="node", hostname="n1", address="http://n1", report=REPORT)
    assert (await registry.get("n1")).state == UP  # type: ignore[union-attr]
    missing = await asyncio.to_thread(_cli, "drain", "n9", "--database-url", store_url)
    assert missing.returncode == 1 and "no node 'n9'" in missing.stdout, missing.stdout


async def _silence(node_id: str, sessions: async_sessionmaker[AsyncSession]) -> None:
    """The node's last heartbeat long ago: the next liveness pass marks it down."""
    async with sessions.begin() as s:
        await s.execute(
            update(NodeRow).where(NodeRow.id == node_id).values(heartbeat_at=utcnow().replace(year=2000))
        )
