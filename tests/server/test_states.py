"""The state table's promises, checked on the table itself (pure logic: no server needed)."""

from __future__ import annotations

import pytest

from atoll._states import TRANSIENT_STATES, TRANSITIONS, Event, InvalidTransition, State, allows, next_state

RESTING = {State.RUNNING, State.PAUSED, State.STOPPED, State.FAILED, State.DELETED}


@pytest.mark.parametrize("state", sorted(TRANSIENT_STATES))
def test_every_transition_has_a_fallback_to_a_resting_state(state: State) -> None:
    """A transition that fails or times out takes ``failed`` back to where no work is under way."""
    assert next_state(state, Event.FAILED) in RESTING


@pytest.mark.parametrize("state", [s for s in State if s != State.DELETED])
def test_anything_but_deleted_can_be_quarantined(state: State) -> None:
    assert next_state(state, Event.QUARANTINE) == State.FAILED


def test_a_failed_sandbox_accepts_only_delete_and_start() -> None:
    accepted = {event for (state, event) in TRANSITIONS if state == State.FAILED}
    assert accepted == {Event.DELETE, Event.START, Event.QUARANTINE}
    assert next_state(State.FAILED, Event.DELETE) == State.DELETING
    assert next_state(State.FAILED, Event.START) == State.STARTING
    for event in (Event.PAUSE, Event.RESUME, Event.SNAPSHOT, Event.STOP, Event.LOST):
        with pytest.raises(InvalidTransition):
            next_state(State.FAILED, event)


def test_lost_is_still_stopped_not_failed() -> None:
    """Processes gone, disk intact (a reboot): stopped, as before; ``failed`` is for repairs."""
    for state in (State.RUNNING, State.PAUSED, State.UNPAUSING, State.SNAPSHOTTING, State.STOPPING):
        assert next_state(state, Event.LOST) == State.STOPPED
    assert not allows(State.DELETED, Event.QUARANTINE)
