"""The control plane's queries (``atoll.store.repo``) behave the same on SQLite and PostgreSQL:
keys, sandbox records, listings, the budget's usage and expiry, scoped to a node in a cluster."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._policy import NetworkPolicy
from atoll._states import State
from atoll.store.models import SandboxRow, SnapshotRow, utcnow
from atoll.store.repo import Repository, SnapshotRepository, new_api_key

ORG = "org-store"


def _row(
    state: str = State.RUNNING, *, org: str = ORG, vcpu: int = 1, memory: int = 256, **values: object
) -> SandboxRow:
    return SandboxRow(
        id="sb-" + secrets.token_hex(6), org_id=org, template_id="tpl", template_name="system/debian",
        runtime="crun", vcpu=vcpu, memory=memory, disk=1024, timeout=600, state=state, env_vars={"A": "b"},
        **values,
    )  # fmt: skip


async def _repo(sessions: async_sessionmaker[AsyncSession], node_id: str | None = None) -> Repository:
    repo = Repository(sessions, node_id=node_id)
    await repo.ensure_org(ORG, "store")
    await repo.ensure_org("org-other", "other")
    return repo


async def test_keys(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    key = new_api_key()
    assert await repo.add_key(ORG, key)
    assert not await repo.add_key(ORG, key)  # the same key twice: refused, not a unique-violation 500
    assert await repo.org_for_key(key) == ORG
    assert await repo.org_for_key(new_api_key()) is None
    [listed] = await repo.list_keys(ORG)
    assert listed.prefix == key[:8] and listed.key_hash != key
    assert await repo.revoke_key(ORG, listed.id) == listed.key_hash
    assert await repo.org_for_key(key) is None
    assert await repo.revoke_key(ORG, listed.id) is None


async def test_sandbox_records(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    policy = NetworkPolicy(mode="custom", allow_cidrs=("1.1.1.1/32",))  # store.models.PolicyJSON
    row = _row(network_policy=policy)
    await repo.add_sandbox(row)
    stored = await repo.get_sandbox(row.id, ORG)
    assert stored is not None and stored.env_vars == {"A": "b"}
    assert stored.network_policy == policy
    assert stored.created_at.tzinfo is not None  # UTC, and aware, on both
    assert await repo.get_sandbox(row.id, "org-other") is None  # one org never sees another's
    updated = await repo.update_sandbox(row.id, state=State.FAILED, state_reason="why")
    assert (updated.state, updated.state_reason) == (State.FAILED, "why")
    assert updated.state_change_time >= stored.state_change_time
    await repo.update_sandbox(row.id, state=State.DELETED)
    assert await repo.get_sandbox(row.id) is None


async def test_listing_counts_sorts_and_pages(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    base = utcnow()
    rows = [_row(created_at=base + dt.timedelta(seconds=i)) for i in range(5)]
    rows[0].state = State.STOPPED
    for row in rows:
        await repo.add_sandbox(row)
    await repo.add_sandbox(_row(org="org-other"))
    page, total = await repo.list_sandboxes(ORG, page=1, page_size=2)
    assert total == 5 and [r.id for r in page] == [rows[4].id, rows[3].id]
    page, _ = await repo.list_sandboxes(ORG, descending=False, page=3, page_size=2)
    assert [r.id for r in page] == [rows[4].id]
    stopped, total = await repo.list_sandboxes(ORG, state=State.STOPPED)
    assert total == 1 and stopped[0].id == rows[0].id
    assert await repo.count_active(ORG) == 4


async def test_usage_counts_what_holds_processes(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    for row in (
        _row(State.RUNNING, vcpu=2, memory=512),
        _row(State.STARTING, vcpu=1, memory=256),
        _row(State.PAUSED, vcpu=4, memory=1024, pause_kind="freeze"),  # frozen: memory still held
        _row(State.PAUSED, vcpu=8, memory=4096, pause_kind="checkpoint"),  # on disk: holds nothing
        _row(State.STOPPED, vcpu=16, memory=8192),
        _row(State.FAILED, vcpu=16, memory=8192),
    ):
        await repo.add_sandbox(row)
    assert await repo.resource_usage() == (7, 1792)


async def test_expired_and_not_deleted(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    past, future = utcnow() - dt.timedelta(seconds=5), utcnow() + dt.timedelta(hours=1)
    due = _row(State.RUNNING, timeout_at=past)
    paused_due = _row(State.PAUSED, timeout_at=past)
    for row in (
        due,
        paused_due,
        _row(State.RUNNING, timeout_at=future),
        _row(State.STOPPED, timeout_at=past),
    ):
        await repo.add_sandbox(row)
    assert {r.id for r in await repo.expired()} == {due.id, paused_due.id}
    await repo.update_sandbox(due.id, state=State.DELETED)
    assert due.id not in {r.id for r in await repo.not_deleted()}


async def test_a_node_sees_only_its_own_sandboxes_for_its_host(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """In a cluster each node reconciles, expires and budgets only what its host runs; reads
    by id and an org's listings stay cluster-wide."""
    node_a = await _repo(sessions, node_id="a")
    node_b = await _repo(sessions, node_id="b")
    past = utcnow() - dt.timedelta(seconds=1)
    on_a = _row(vcpu=2, memory=300, timeout_at=past)
    on_b = _row(vcpu=3, memory=500, timeout_at=past)
    await node_a.add_sandbox(on_a)
    await node_b.add_sandbox(on_b)
    assert (await node_a.get_sandbox(on_b.id)) is not None
    assert (await node_b.get_sandbox(on_a.id, ORG)).node_id == "a"  # type: ignore[union-attr]
    assert [r.id for r in await node_a.not_deleted()] == [on_a.id]
    assert [r.id for r in await node_b.expired()] == [on_b.id]
    assert await node_a.resource_usage() == (2, 300)
    assert await node_b.resource_usage() == (3, 500)
    assert (await node_a.list_sandboxes(ORG))[1] == 2


async def test_snapshots(sessions: async_sessionmaker[AsyncSession]) -> None:
    repo = await _repo(sessions)
    snapshots = SnapshotRepository(sessions)
    source = _row()
    await repo.add_sandbox(source)

    def snapshot(name: str, parent: str | None = None) -> SnapshotRow:
        return SnapshotRow(
            id="sn-" + secrets.token_hex(6), org_id=ORG, name=name, source_sandbox_id=source.id,
            parent_snapshot_id=parent, template_id="tpl", template_name="t", runtime="crun", vcpu=1,
            memory=256, disk=1024, env_vars={}, size_bytes=5 << 30, inodes=12,
        )  # fmt: skip

    first = snapshot("first_50%")
    await snapshots.add(first)
    child = snapshot("second", parent=first.id)
    await snapshots.add(child)
    assert (await snapshots.by_name(ORG, "first_50%")).size_bytes == 5 << 30  # type: ignore[union-attr]
    assert await snapshots.get("org-other", first.id) is None
    assert await snapshots.in_use(first.id)  # a newer snapshot builds on it
    matched, total = await snapshots.list(ORG, query="_50%")  # LIKE wildcards are literal
    assert total == 1 and matched[0].id == first.id
    assert (await snapshots.list(ORG, query="rs_"))[1] == 0  # "_" is no wildcard
    await snapshots.delete(child.id)
    assert not await snapshots.in_use(first.id)
    assert await snapshots.all_ids() == {first.id}
