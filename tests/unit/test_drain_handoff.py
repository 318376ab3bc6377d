"""Moving a paused sandbox off a draining node, its pure parts: the retry schedule of failed
moves (``handoff.RetryBook``), the three conditional writes of the handoff on the real SQLite
store (``handoff.SandboxHandoff``: exactly one of source and target wins, whatever the order),
and a node refusing to act on a sandbox that moved away (``SandboxManager.require_here``)."""

from __future__ import annotations

import datetime as dt

import pytest

from atoll._exceptions import ConflictError
from atoll._states import State
from atoll.cluster.handoff import RETRY_AFTER_MAX_S, RETRY_AFTER_S, RetryBook, SandboxHandoff
from atoll.store.models import SandboxRow
from tests.unit.conftest import MakeHost, unit_row

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_failed_move_waits_longer_each_time_up_to_a_bound() -> None:
    book = RetryBook()
    delays = [book.failed("s1", _at(0)) for _ in range(8)]
    assert delays[0] == RETRY_AFTER_S and delays[1] == 2 * RETRY_AFTER_S
    assert max(delays) == RETRY_AFTER_MAX_S and delays == sorted(delays)


def test_the_next_sandbox_is_the_first_not_busy_nor_waiting() -> None:
    book = RetryBook(base_s=30)
    assert book.next_up([], _at(0)) is None
    assert book.next_up(["s1", "s2"], _at(0)) == "s1"
    assert book.next_up(["s1", "s2"], _at(0), busy=["s1"]) == "s2"
    book.failed("s1", _at(0))
    assert book.next_up(["s1", "s2"], _at(10)) == "s2"
    book.failed("s2", _at(10))
    assert book.next_up(["s1", "s2"], _at(20)) is None  # both wait
    assert book.next_up(["s1", "s2"], _at(30)) == "s1"  # s1's wait is over
    book.succeeded("s1")
    assert book.next_up(["s1", "s2"], _at(31)) == "s1"


def test_a_sandbox_no_longer_movable_is_forgotten() -> None:
    book = RetryBook(base_s=30)
    book.failed("s1", _at(0))
    assert book.next_up(["s2"], _at(1)) == "s2"  # s1 resumed meanwhile: forgotten
    assert book.next_up(["s1"], _at(2)) == "s1"  # paused again: tried at once, from the start
    assert book.failed("s1", _at(2)) == 30


async def _paused_on(make_host: MakeHost, node_id: str, *, pause_kind: str = "checkpoint") -> SandboxHandoff:
    host = await make_host()
    row = unit_row("sbx-moving", State.PAUSED, net_slot=3)
    row.pause_kind, row.node_id = pause_kind, node_id
    await host.repo.add_sandbox(row)
    return SandboxHandoff(host.repo.sessions)


async def _row(handoff: SandboxHandoff) -> SandboxRow:
    async with handoff.sessions() as s:
        row = await s.get(SandboxRow, "sbx-moving")
    assert row is not None
    return row


async def test_the_target_takes_a_sandbox_only_during_the_move_it_was_asked_for(make_host: MakeHost) -> None:
    handoff = await _paused_on(make_host, "a")
    assert [row.id for row in await handoff.movable("a")] == ["sbx-moving"]
    assert await handoff.movable("b") == []
    assert await handoff.claim("sbx-moving", "b") is None  # not b's
    move_id = await handoff.claim("sbx-moving", "a")
    assert move_id is not None
    assert await handoff.claimed("sbx-moving", "a", move_id) is not None
    assert await handoff.claimed("sbx-moving", "a", "mv" + "0" * 16) is None
    assert not await handoff.take("sbx-moving", source="a", target="b", move_id="mv" + "0" * 16, net_slot=7)
    assert not await handoff.take("sbx-moving", source="c", target="b", move_id=move_id, net_slot=7)
    assert await handoff.take("sbx-moving", source="a", target="b", move_id=move_id, net_slot=7)
    row = await _row(handoff)
    assert (row.node_id, row.net_slot, row.move_id, row.state) == ("b", 7, None, State.PAUSED)
    # the source's give-up comes too late: the sandbox is b's, the source removes its copy
    assert await handoff.abandon("sbx-moving", "a", move_id) is False
    assert await handoff.claimed("sbx-moving", "a", move_id) is None


async def test_a_move_given_up_can_no_longer_take_the_sandbox(make_host: MakeHost) -> None:
    handoff = await _paused_on(make_host, "a")
    stale = await handoff.claim("sbx-moving", "a")
    assert stale is not None
    assert await handoff.abandon("sbx-moving", "a", stale) is True  # stays a's
    assert not await handoff.take("sbx-moving", source="a", target="b", move_id=stale)
    fresh = await handoff.claim("sbx-moving", "a")  # a later attempt: the stale one still cannot
    assert fresh is not None and fresh != stale
    assert not await handoff.take("sbx-moving", source="a", target="b", move_id=stale)
    assert await handoff.clear_stale("a") == 1  # the node restarted mid-move
    assert not await handoff.take("sbx-moving", source="a", target="c", move_id=fresh)
    assert (await _row(handoff)).node_id == "a"


async def test_only_paused_sandboxes_whose_memory_is_on_disk_move(make_host: MakeHost) -> None:
    handoff = await _paused_on(make_host, "a", pause_kind="freeze")
    assert await handoff.movable("a") == []
    assert await handoff.claim("sbx-moving", "a") is None


async def test_a_node_refuses_a_sandbox_another_node_holds(make_host: MakeHost) -> None:
    host = await make_host()
    manager = host.manager
    row = unit_row("sbx-elsewhere", State.PAUSED)
    row.node_id = "b"
    assert manager.require_here(row) is row  # one host (no node id): every row is its own
    manager.repo.node_id = "a"
    with pytest.raises(ConflictError, match="moved to node b"):
        manager.require_here(row)
    row.node_id = "a"
    assert manager.require_here(row) is row
