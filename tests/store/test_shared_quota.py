"""The organisation's sandbox limit holds across processes on PostgreSQL: two control planes
(two engines, as two processes have) admitting sandboxes of one org at once never take it over
its limit, because claims are rows taken under the org's row lock (``atoll.store.claims``)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from atoll._exceptions import ConflictError
from atoll._states import State
from atoll.server.quota import OrgQuota
from atoll.store import db
from atoll.store.repo import Repository
from tests.store.test_repo import ORG, _row

LIMIT = 3


async def _admit(quota: OrgQuota, repo: Repository) -> bool:
    row = _row(State.STARTING)
    try:
        async with quota.claim(ORG, row.id):
            await asyncio.sleep(0.2)  # booting, before its record exists
            await repo.add_sandbox(row)
    except ConflictError:
        return False
    return True


async def test_two_processes_never_exceed_an_orgs_limit(engine: AsyncEngine, store_url: str) -> None:
    if not db.is_postgresql(store_url):
        pytest.skip("one host (SQLite) has one process: its claims stay in memory (tests/unit/test_quota.py)")
    other_engine = db.make_engine(store_url)
    try:
        first = Repository(db.sessions(engine), node_id="a")
        second = Repository(db.sessions(other_engine), node_id="b")
        await first.ensure_org(ORG, ORG)
        quotas = [(OrgQuota(first, LIMIT), first), (OrgQuota(second, LIMIT), second)]
        admitted = await asyncio.gather(*(_admit(*quotas[i % 2]) for i in range(10)))
        assert sum(admitted) == LIMIT
        assert await first.count_active(ORG) == LIMIT
        # the claims went with their sandboxes' records: a deleted one frees room for the other process
        [some, *_] = await first.not_deleted()
        await first.update_sandbox(some.id, state=State.DELETED)
        assert await _admit(*quotas[1])
        assert not await _admit(*quotas[0])
    finally:
        await other_engine.dispose()
