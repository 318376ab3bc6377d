"""The one transition table (``atoll._states``): every row is taken, every other pair refused,
both by ``next_state`` and by the manager's ``move`` against the real store."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import atoll
from atoll._exceptions import ConflictError
from atoll._states import TRANSITIONS, Event, InvalidTransition, State, allows, next_state
from atoll.store.models import SandboxRow
from tests.unit.conftest import MakeHost, unit_row

REFUSED = [pair for pair in itertools.product(State, Event) if pair not in TRANSITIONS]


def test_the_table_has_rows_and_refusals() -> None:
    assert len(TRANSITIONS) + len(REFUSED) == len(State) * len(Event)
    assert len(TRANSITIONS) >= 30 and REFUSED  # a table emptied by mistake is not "all allowed"


@pytest.mark.parametrize(("state", "event"), list(TRANSITIONS), ids=lambda v: str(v))
def test_every_row_is_taken(state: State, event: Event) -> None:
    assert allows(state, event)
    assert next_state(state, event) is TRANSITIONS[state, event]


@pytest.mark.parametrize(("state", "event"), REFUSED, ids=lambda v: str(v))
def test_every_other_pair_is_refused(state: State, event: Event) -> None:
    assert not allows(state, event)
    with pytest.raises(InvalidTransition) as caught:
        next_state(state, event)
    assert caught.value.state is state and caught.value.event is event


def test_deleted_is_final_and_failed_accepts_only_delete_and_start() -> None:
    assert not any(allows(State.DELETED, event) for event in Event)
    assert {e for e in Event if allows(State.FAILED, e)} == {Event.DELETE, Event.START, Event.QUARANTINE}
    assert all(TRANSITIONS[s, Event.QUARANTINE] is State.FAILED for s in State if s is not State.DELETED)


def _row(index: int, state: State) -> SandboxRow:
    return unit_row(f"sbxtable{index:04d}", state)


async def test_move_records_every_row_and_refuses_every_other_pair(make_host: MakeHost) -> None:
    host = await make_host()
    manager = host.manager
    for index, ((state, event), target) in enumerate(TRANSITIONS.items()):
        row = _row(index, state)
        await host.repo.add_sandbox(row)
        moved = await manager.move(row, event, reason="why")
        stored = await host.stored(row.id)
        assert (moved.state, stored.state, stored.state_reason) == (target, target, "why"), (state, event)
    for index, (state, event) in enumerate(REFUSED, start=len(TRANSITIONS)):
        row = _row(index, state)
        await host.repo.add_sandbox(row)
        with pytest.raises(ConflictError):
            await manager.move(row, event)
        stored = await host.stored(row.id)
        assert stored.state == state, (state, event)  # nothing written


def test_only_move_writes_a_state() -> None:
    """Every state write goes through ``SandboxManager.move`` (the table): no other call of
    ``update_sandbox`` anywhere in ``atoll/`` passes a ``state``."""
    root = Path(atoll.__file__).parent
    writers = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        if "update_sandbox" not in source:  # parsing only the files that may write one
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update_sandbox"
                and any(keyword.arg == "state" for keyword in node.keywords)
            ):
                writers.append(f"{path.relative_to(root)}:{node.lineno}")
    assert len(writers) == 1 and writers[0].startswith("server/manager.py:"), writers
