"""Timeout expiry (``SandboxManager.expire_due``, run by the server's reaper): a sandbox past its
timeout is deleted, or paused when created with ``auto_pause``; one in a transition is left for
the next round; one failure does not stop the others."""

from __future__ import annotations

import datetime as dt

from atoll._states import State
from atoll.store.models import utcnow
from tests.unit.conftest import Host, MakeHost


async def _due(host: Host, sandbox_id: str) -> None:
    await host.repo.update_sandbox(sandbox_id, timeout_at=utcnow() - dt.timedelta(seconds=1))


async def test_a_sandbox_past_its_timeout_is_deleted(make_host: MakeHost) -> None:
    host = await make_host()
    due, later = await host.create(), await host.create()
    await _due(host, due.id)
    await host.manager.expire_due()
    assert (await host.stored(due.id)).state == State.DELETED
    assert (await host.stored(later.id)).state == State.RUNNING  # not due yet: untouched
    assert host.backend.holds == {later.id}
    await host.manager.delete(later.org_id, later.id)
    assert host.holds_nothing()


async def test_auto_pause_pauses_instead_and_the_next_request_resumes(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create(auto_pause=True)
    await _due(host, row.id)
    await host.manager.expire_due()
    paused = await host.stored(row.id)
    assert (paused.state, paused.pause_kind, paused.timeout_at) == (State.PAUSED, "checkpoint", None)
    assert not host.backend.holds  # checkpointed: its memory is on disk, not on the host
    await host.manager.expire_due()  # a paused auto_pause sandbox has no timeout left to expire
    assert (await host.stored(row.id)).state == State.PAUSED
    resumed = await host.manager.ensure_running(paused)
    assert resumed.state == State.RUNNING and resumed.timeout_at is not None
    assert resumed.timeout_at > utcnow()  # counted again from the resume


async def test_a_paused_auto_pause_sandbox_only_loses_its_timeout(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create(auto_pause=True)
    await host.manager.pause(row.org_id, row.id)
    await _due(host, row.id)
    await host.manager.expire_due()
    stored = await host.stored(row.id)
    assert (stored.state, stored.timeout_at) == (State.PAUSED, None)


async def test_a_sandbox_in_a_transition_waits_for_the_next_round(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    await _due(host, row.id)
    async with host.manager.transition(row.id):
        await host.manager.expire_due()
        assert (await host.stored(row.id)).state == State.RUNNING
    await host.manager.expire_due()
    assert (await host.stored(row.id)).state == State.DELETED
    assert host.holds_nothing()


async def test_one_failing_expiry_does_not_stop_the_others(make_host: MakeHost) -> None:
    host = await make_host()
    stuck = await host.create(auto_pause=True)
    due = await host.create()
    for row in (stuck, due):
        await _due(host, row.id)
    # the auto_pause one cannot pause (nor be resumed after): it is quarantined, with the reason
    host.backend.faults.fail("checkpoint")
    host.backend.faults.fail("pause")
    host.backend.faults.fail("resume")
    await host.manager.expire_due()
    assert (await host.stored(due.id)).state == State.DELETED
    failed = await host.stored(stuck.id)
    assert failed.state == State.FAILED and failed.state_reason
