"""Handing a paused sandbox from a draining node to another (docs/cluster.md, "Draining"): the
database side. A sandbox's row says which node holds it (``node_id``); a move changes that once,
and only when the receiving node holds the complete copy.

The three writes, each one conditional statement on the sandbox's row, so that exactly one of
the two nodes wins whatever the order they run in (and whichever dies between them):

1. ``claim`` (the source): a paused, checkpointed sandbox of its own, not being moved, gets a
   fresh ``move_id``. The sandbox stays ``paused``: its state does not change, only its node
   will; the source holds the sandbox's own lock for the whole move, so nothing of its own
   resumes, deletes or pauses it meanwhile (a resume waits, a delete gets 409).
2. ``take`` (the target, once its copy is complete): ``node_id`` becomes the target's, with
   the target's network slot, where the row still is the source's, paused, with that very
   ``move_id``.
3. ``abandon`` (the source, when the target failed or did not answer): the ``move_id`` is
   cleared where the row still is the source's; a target that took it first wins, and the
   source then removes its own copy instead (``taken``).

A ``take`` after an ``abandon`` finds no ``move_id`` (a stale attempt never takes a sandbox that
was resumed and paused again since), and an ``abandon`` after a ``take`` finds another node.
Nothing else writes the row of a moving sandbox: the liveness job fails it only when the source
is silent, and then the target's ``take`` finds it ``failed`` and gives up."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._states import State
from atoll.store.models import SandboxRow

MOVABLE_PAUSE = "checkpoint"  # a frozen sandbox's memory is in its host's RAM: it cannot move
RETRY_AFTER_S = 30.0  # a sandbox whose move failed is tried again after this (no room, a refusal)
RETRY_AFTER_MAX_S = 300.0


def new_move_id() -> str:
    return "mv" + secrets.token_hex(8)


class SandboxHandoff:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def movable(self, node_id: str) -> Sequence[SandboxRow]:
        """The node's paused sandboxes whose memory is on disk, oldest pause first."""
        statement = (
            select(SandboxRow)
            .where(
                SandboxRow.node_id == node_id,
                SandboxRow.state == State.PAUSED,
                SandboxRow.pause_kind == MOVABLE_PAUSE,
            )
            .order_by(SandboxRow.state_change_time, SandboxRow.id)
        )
        async with self.sessions() as s:
            return (await s.scalars(statement)).all()

    async def claim(self, sandbox_id: str, node_id: str) -> str | None:
        """A new move of the node's paused sandbox: its ``move_id``, or None when the row is not
        (or no longer) the node's paused, checkpointed sandbox. An earlier attempt's id left by
        a source that died mid-move is replaced: that attempt can no longer take it."""
        move_id = new_move_id()
        statement = (
            update(SandboxRow)
            .where(
                SandboxRow.id == sandbox_id,
                SandboxRow.node_id == node_id,
                SandboxRow.state == State.PAUSED,
                SandboxRow.pause_kind == MOVABLE_PAUSE,
            )
            .values(move_id=move_id)
        )
        return move_id if await self._changed(statement) else None

    async def claimed(self, sandbox_id: str, node_id: str, move_id: str) -> SandboxRow | None:
        """The row while that move of it from ``node_id`` is under way, else None."""
        async with self.sessions() as s:
            row = await s.get(SandboxRow, sandbox_id)
        if row is None or row.node_id != node_id or row.move_id != move_id or row.state != State.PAUSED:
            return None
        return row

    async def take(self, sandbox_id: str, *, source: str, target: str, move_id: str, **values: Any) -> bool:
        """The target's: the sandbox is now ``target``'s (with ``values``, its slot there), when
        the move ``move_id`` from ``source`` is still the one under way."""
        statement = (
            update(SandboxRow)
            .where(
                SandboxRow.id == sandbox_id,
                SandboxRow.node_id == source,
                SandboxRow.state == State.PAUSED,
                SandboxRow.move_id == move_id,
            )
            .values(node_id=target, move_id=None, **values)
        )
        return await self._changed(statement)

    async def abandon(self, sandbox_id: str, node_id: str, move_id: str) -> bool:
        """The source's, after a failed move: True when the sandbox stays its own (the move can
        no longer take it), False when another node took it first."""
        statement = (
            update(SandboxRow)
            .where(SandboxRow.id == sandbox_id, SandboxRow.node_id == node_id, SandboxRow.move_id == move_id)
            .values(move_id=None)
        )
        if await self._changed(statement):
            return True
        async with self.sessions() as s:
            node = await s.scalar(select(SandboxRow.node_id).where(SandboxRow.id == sandbox_id))
        return node == node_id  # still ours (a move id cleared meanwhile), or gone elsewhere

    async def clear_stale(self, node_id: str) -> int:
        """At the node's start: moves it had under way when it stopped can no longer take."""
        statement = (
            update(SandboxRow)
            .where(SandboxRow.node_id == node_id, SandboxRow.move_id.is_not(None))
            .values(move_id=None)
        )
        async with self.sessions.begin() as s:
            result = await s.execute(statement)
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _changed(self, statement: Any) -> bool:
        async with self.sessions.begin() as s:
            result = await s.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class RetryBook:
    """When each sandbox whose move failed may be tried again: ``RETRY_AFTER_S`` after its first
    failure, doubling up to ``RETRY_AFTER_MAX_S`` (a cluster without room is not asked every
    tick), forgotten once it moved or is no longer movable. Pure: the caller gives the time."""

    base_s: float = RETRY_AFTER_S
    most_s: float = RETRY_AFTER_MAX_S
    _due: dict[str, tuple[dt.datetime, float]] = field(default_factory=dict)  # id -> (due, delay)

    def failed(self, sandbox_id: str, now: dt.datetime) -> float:
        """Record a failure; the seconds until the next try."""
        _, last_s = self._due.get(sandbox_id, (now, 0.0))
        delay_s = min(self.most_s, last_s * 2) if last_s else self.base_s
        self._due[sandbox_id] = (now + dt.timedelta(seconds=delay_s), delay_s)
        return delay_s

    def succeeded(self, sandbox_id: str) -> None:
        self._due.pop(sandbox_id, None)

    def next_up(self, candidates: Iterable[str], now: dt.datetime, busy: Iterable[str] = ()) -> str | None:
        """The first candidate not busy and not waiting for its retry; the book forgets the
        sandboxes that are no longer candidates."""
        ids = list(candidates)
        for gone in self._due.keys() - set(ids):
            del self._due[gone]
        skip = set(busy)
        for sandbox_id in ids:
            due = self._due.get(sandbox_id)
            if sandbox_id not in skip and (due is None or due[0] <= now):
                return sandbox_id
        return None
