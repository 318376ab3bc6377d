"""Every transition's work is bounded (``transition_timeout_s``): with the fake hanging, each one
ends in 504 within the limit, and the sandbox is back in a resting state with the reason, or
quarantined when even its clean-up hangs. No transient state outlives its operation."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from atoll._exceptions import APIError
from atoll._states import TRANSIENT_STATES, State
from tests.unit.conftest import ORG, Host, MakeHost

LIMIT_S = 0.05
T = TypeVar("T")


async def _times_out(work: Awaitable[T]) -> APIError:
    began = time.monotonic()
    with pytest.raises(APIError) as caught:
        await work
    assert caught.value.status_code == 504 and "timed out" in caught.value.message
    assert time.monotonic() - began < 2.0  # bounded: the limit, plus a clean-up's own limit
    return caught.value


async def _host(make_host: MakeHost) -> Host:
    return await make_host(transition_timeout_s=LIMIT_S)


async def test_a_create_that_hangs_times_out_and_leaves_nothing(make_host: MakeHost) -> None:
    host = await _host(make_host)
    host.backend.faults.hang("boot")
    await _times_out(host.create())
    assert await host.records() == [] and host.holds_nothing()


async def test_a_restore_on_resume_that_hangs_goes_back_to_paused(make_host: MakeHost) -> None:
    host = await _host(make_host)
    row = await host.create()
    paused = await host.manager.pause(ORG, row.id)
    host.backend.faults.hang("restore")
    await _times_out(host.manager.ensure_running(paused))
    stored = await host.stored(row.id)
    assert stored.state == State.PAUSED and "timed out" in (stored.state_reason or "")
    assert not host.backend.holds


async def test_a_pause_that_hangs_is_undone(make_host: MakeHost) -> None:
    host = await _host(make_host)
    host.backend.can_checkpoint = False  # a freeze that never returns
    row = await host.create()
    host.backend.faults.hang("pause")
    await _times_out(host.manager.pause(ORG, row.id))
    stored = await host.stored(row.id)
    assert stored.state == State.RUNNING and "pausing timed out" in (stored.state_reason or "")
    assert host.backend.running == {row.id}


async def test_a_pause_that_hangs_and_cannot_be_resumed_is_quarantined(make_host: MakeHost) -> None:
    host = await _host(make_host)
    host.backend.can_checkpoint = False
    row = await host.create()
    host.backend.faults.hang("pause")
    host.backend.faults.hang("resume")
    await _times_out(host.manager.pause(ORG, row.id))
    stored = await host.stored(row.id)
    assert stored.state == State.FAILED and "could not be resumed" in (stored.state_reason or "")
    assert not host.backend.holds and not host.pool.taken  # its processes removed


async def test_a_stop_that_hangs_is_stopped_when_cleaned_up(make_host: MakeHost) -> None:
    host = await _host(make_host)
    row = await host.create()
    host.backend.faults.hang("halt", times=1)  # the clean-up after it succeeds
    await _times_out(host.manager.stop(ORG, row.id))
    stored = await host.stored(row.id)
    assert stored.state == State.STOPPED and "stopping timed out" in (stored.state_reason or "")
    assert host.holds_nothing()


async def test_a_stop_whose_clean_up_hangs_too_is_quarantined(make_host: MakeHost) -> None:
    host = await _host(make_host)
    row = await host.create()
    host.backend.faults.hang("halt")
    await _times_out(host.manager.stop(ORG, row.id))
    stored = await host.stored(row.id)
    assert stored.state == State.FAILED and "cleaning up failed" in (stored.state_reason or "")


async def test_a_start_that_hangs_is_stopped_again(make_host: MakeHost) -> None:
    host = await _host(make_host)
    row = await host.create()
    await host.manager.stop(ORG, row.id)
    host.backend.faults.hang("boot")
    await _times_out(host.manager.start(ORG, row.id))
    stored = await host.stored(row.id)
    assert stored.state == State.STOPPED and "starting timed out" in (stored.state_reason or "")
    assert host.holds_nothing()


async def test_a_delete_that_hangs_is_deleted_anyway(make_host: MakeHost) -> None:
    host = await _host(make_host)
    row = await host.create()
    host.backend.faults.hang("halt")
    await _times_out(host.manager.delete(ORG, row.id))
    assert (await host.stored(row.id)).state == State.DELETED


async def test_no_transient_state_outlives_a_hung_operation(make_host: MakeHost) -> None:
    host = await _host(make_host)
    rows = [await host.create() for _ in range(3)]
    host.backend.faults.hang("halt")
    host.backend.faults.hang("boot")
    for row, work in zip(rows, ("stop", "delete", "pause"), strict=True):
        if work == "pause":
            host.backend.faults.hang("checkpoint")
        with pytest.raises(APIError):
            await getattr(host.manager, work)(ORG, row.id)
    for record in await host.records():
        assert State(record.state) not in TRANSIENT_STATES, record
