"""Failure half-way through each transition, against the fake host: the caller gets a typed
error, the record says the right state (and why), and nothing is left in the fakes' books."""

from __future__ import annotations

import asyncio

import pytest

from atoll._exceptions import APIError, ConflictError
from atoll._states import State
from atoll.runtime.spec import CheckpointFailed
from tests.unit.conftest import ORG, MakeHost
from tests.unit.fakes import InjectedFailure


async def test_create_pause_resume_stop_start_delete_keep_the_books(make_host: MakeHost) -> None:
    """The happy path first: what each step holds, so that the failure tests' "nothing" means it."""
    host = await make_host()
    row = await host.create()
    assert row.state == State.RUNNING and host.backend.running == {row.id}
    assert host.pool.taken == {row.net_slot}
    assert host.disks.attached == {host.manager.host.sandbox_dir(row.id)}
    paused = await host.manager.pause(ORG, row.id)
    assert (paused.state, paused.pause_kind) == (State.PAUSED, "checkpoint")
    assert not host.backend.holds and host.manager.host.checkpoint_dir(row.id).is_dir()
    resumed = await host.manager.ensure_running(paused)
    assert resumed.state == State.RUNNING and host.backend.running == {row.id}
    assert not host.manager.host.checkpoint_dir(row.id).exists()
    stopped = await host.manager.stop(ORG, row.id)
    assert stopped.state == State.STOPPED and host.holds_nothing()
    started = await host.manager.start(ORG, row.id)
    assert started.state == State.RUNNING and host.backend.running == {row.id}
    await host.manager.delete(ORG, row.id)
    assert (await host.stored(row.id)).state == State.DELETED
    assert host.holds_nothing() and not host.manager.host.sandbox_dir(row.id).exists()


@pytest.mark.parametrize("operation", ["acquire", "boot"])
async def test_a_create_that_fails_leaves_nothing_not_even_a_record(
    make_host: MakeHost, operation: str
) -> None:
    host = await make_host()
    faults = host.pool.faults if operation == "acquire" else host.backend.faults
    faults.fail(operation)
    with pytest.raises(APIError) as caught:
        await host.create()
    assert caught.value.status_code == 500
    assert await host.records() == []
    assert host.holds_nothing()
    assert list(host.manager.settings.sandboxes_dir.iterdir()) == []


async def test_a_create_whose_disk_fails_leaves_nothing(make_host: MakeHost) -> None:
    host = await make_host()
    host.disks.faults.fail("attach")
    with pytest.raises(APIError) as caught:
        await host.create()
    assert caught.value.status_code == 500
    assert await host.records() == [] and host.holds_nothing()


async def test_a_failed_checkpoint_pauses_by_freezing(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("checkpoint", CheckpointFailed("criu said no"))
    paused = await host.manager.pause(ORG, row.id)
    assert (paused.state, paused.pause_kind) == (State.PAUSED, "freeze")
    assert host.backend.paused == {row.id} and not host.manager.host.checkpoint_dir(row.id).exists()
    resumed = await host.manager.ensure_running(paused)
    assert resumed.state == State.RUNNING and host.backend.running == {row.id}


async def test_a_failed_freeze_leaves_it_running(make_host: MakeHost) -> None:
    host = await make_host()
    host.backend.can_checkpoint = False
    row = await host.create()
    host.backend.faults.fail("pause", times=1)
    with pytest.raises(APIError) as caught:
        await host.manager.pause(ORG, row.id)
    assert caught.value.status_code == 500
    stored = await host.stored(row.id)
    assert stored.state == State.RUNNING and host.backend.running == {row.id}
    assert "pausing failed" in (stored.state_reason or "")
    assert (await host.manager.pause(ORG, row.id)).state == State.PAUSED  # and it can be tried again


async def test_a_pause_whose_processes_went_with_the_checkpoint_is_quarantined(make_host: MakeHost) -> None:
    """Checkpointed (its processes end with it), then removing the container fails: it is not
    running any more, and cannot be resumed, so it is ``failed`` with the reason, never a
    ``running`` record with nothing behind it."""
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("halt", times=1)
    with pytest.raises(APIError) as caught:
        await host.manager.pause(ORG, row.id)
    assert caught.value.status_code == 500 and "failed to pause" in caught.value.message
    stored = await host.stored(row.id)
    assert stored.state == State.FAILED and "could not be resumed" in (stored.state_reason or "")
    assert host.holds_nothing()
    assert (await host.manager.start(ORG, row.id)).state == State.RUNNING  # over its kept disk
    assert not host.manager.host.checkpoint_dir(row.id).exists()  # memory of an earlier life: gone


async def test_a_failed_resume_goes_back_to_paused_with_the_reason(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    paused = await host.manager.pause(ORG, row.id)
    host.backend.faults.fail("restore", times=1)
    with pytest.raises(APIError) as caught:
        await host.manager.ensure_running(paused)
    assert caught.value.status_code == 500
    stored = await host.stored(row.id)
    assert stored.state == State.PAUSED and "resuming failed" in (stored.state_reason or "")
    assert not host.backend.holds  # nothing half-restored
    assert host.manager.host.checkpoint_dir(row.id).is_dir()  # kept: a later request tries again
    resumed = await host.manager.ensure_running(await host.stored(row.id))
    assert resumed.state == State.RUNNING and resumed.state_reason is None


async def test_a_failed_stop_cleaned_up_is_stopped_with_the_reason(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("halt", times=1)  # the clean-up after it succeeds
    with pytest.raises(APIError) as caught:
        await host.manager.stop(ORG, row.id)
    assert caught.value.status_code == 500
    stored = await host.stored(row.id)
    assert stored.state == State.STOPPED and "stopping failed" in (stored.state_reason or "")
    assert stored.net_slot is None and host.holds_nothing()


async def test_a_stop_that_cannot_be_cleaned_up_is_quarantined(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("halt")
    with pytest.raises(APIError):
        await host.manager.stop(ORG, row.id)
    stored = await host.stored(row.id)
    assert stored.state == State.FAILED
    assert "cleaning up failed" in (stored.state_reason or "")
    assert stored.net_slot is not None  # kept until a clean-up succeeds, so start or delete frees it
    host.backend.faults.clear()
    await host.manager.delete(ORG, row.id)
    assert (await host.stored(row.id)).state == State.DELETED and host.holds_nothing()


async def test_a_failed_start_is_stopped_again_with_the_reason(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    await host.manager.stop(ORG, row.id)
    host.backend.faults.fail("boot", times=1)
    with pytest.raises(APIError) as caught:
        await host.manager.start(ORG, row.id)
    assert caught.value.status_code == 500
    stored = await host.stored(row.id)
    assert stored.state == State.STOPPED and "starting failed" in (stored.state_reason or "")
    assert host.holds_nothing()
    assert host.manager.host.sandbox_dir(row.id).is_dir()  # its disk is kept
    assert (await host.manager.start(ORG, row.id)).state == State.RUNNING


async def test_a_failed_sandbox_starts_over_its_kept_disk(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("halt")
    with pytest.raises(APIError):
        await host.manager.stop(ORG, row.id)
    host.backend.faults.clear()
    with pytest.raises(ConflictError):  # failed accepts only start and delete
        await host.manager.pause(ORG, row.id)
    started = await host.manager.start(ORG, row.id)
    assert started.state == State.RUNNING and host.backend.running == {row.id}
    assert host.pool.taken == {started.net_slot}  # the old slot was freed, one new one is held


async def test_a_failed_delete_still_deletes_the_record(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.fail("halt")
    with pytest.raises(InjectedFailure):
        await host.manager.delete(ORG, row.id)
    assert (await host.stored(row.id)).state == State.DELETED  # the start-up sweep removes the rest
    with pytest.raises(APIError) as caught:
        await host.manager.get(ORG, row.id)
    assert caught.value.status_code == 404


async def test_a_transition_under_way_refuses_a_second_one(make_host: MakeHost) -> None:
    host = await make_host()
    row = await host.create()
    host.backend.faults.delay_s = 0.05
    stopping = asyncio.ensure_future(host.manager.stop(ORG, row.id))
    await asyncio.sleep(0.01)
    with pytest.raises(ConflictError):
        await host.manager.pause(ORG, row.id)
    with pytest.raises(ConflictError):
        await host.manager.delete(ORG, row.id)
    assert (await stopping).state == State.STOPPED
