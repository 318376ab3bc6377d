"""Placement: which node of the cluster a new sandbox goes to, and the room it holds there.

A node qualifies when it is ``up`` and its reservations plus the sandbox fit in its host's CPUs
and memory times the over-commit factors (``Settings.cpu_overcommit``, ``memory_overcommit``:
the same factors a single host budgets itself with). Among those, the lowest score wins:

    score = the organisation's sandboxes already placed there
          + ``uncached_penalty`` if the node has not cached the template
          + ``cold_penalty``     if the node has no warm sandbox of the template ready
          + its load after the sandbox (mean of its vCPU and memory fractions, in [0, 1])

so an organisation's sandboxes spread one per node first, a node that would have to pull the
template is taken only once the nodes that have it each hold ``uncached_penalty`` more of that
organisation's sandboxes, a warm node beats a cold one at equal spread, and the least loaded
node breaks the remaining ties. The organisation's count is looked up only for the
``placement_sql.SHORTLIST`` (32) best nodes by the other terms: exact on clusters of up to 32
nodes, and on larger ones the spread is among those 32 (counting on all 1,000 nodes of a large
cluster for every create would cost more than the rest of the placement).

**Reservation** is one conditional ``UPDATE nodes ... WHERE id = (the best candidate) AND
<it still fits> RETURNING``, then the placement's row, in one transaction. The condition in the
UPDATE itself is the guarantee: PostgreSQL re-evaluates an UPDATE's WHERE on the newest version
of a row another transaction changed meanwhile (READ COMMITTED), so two processes placing at
once can never both take the last room of a node. The candidate is chosen with ``FOR UPDATE
SKIP LOCKED``, so that placers racing for the same best node do not queue on its row: each
takes the best node nobody is reserving at that instant. When every fitting node was locked,
the next attempts wait for the lock instead (a fresh transaction each time, so a placer holds
at most one node row and two never deadlock). On PostgreSQL the reservation and the
placement's row are one statement (a data-modifying WITH): a create costs one statement and one
commit, whatever the number of nodes. SQLite (one host, one writer at a time) runs the two
statements without row locks, which it does not need.

The heartbeat never writes the reserved columns (the node reports what it uses separately),
so a heartbeat cannot undo a reservation another process just made. ``release`` gives back
exactly what the placement's row holds, once."""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import and_, delete, exists, or_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from atoll._exceptions import ClusterCapacityExhausted
from atoll._states import State
from atoll.cluster import placement_sql
from atoll.store.models import PlacementRow, SandboxRow, utcnow


class OvercommitSettings(Protocol):
    """What placement reads of the server's settings (the cluster layer never imports the server)."""

    cpu_overcommit: float
    memory_overcommit: float


RETRY_AFTER_S = 5  # sandboxes end and nodes join: soon, but not at once
# attempts when racing placers held every fitting node's row: each waits for one of them, so
# this bounds the waits of one create, not its chances on a cluster with room
MAX_ATTEMPTS = 16
# a create placed before its node names the sandbox holds its room under a provisional id
PROVISIONAL_PREFIX = "pending-"
# longer than any create takes (a template pull included): released after this if never named
PROVISIONAL_TTL_S = 900.0
# a sandbox in these states holds no room on its node any more
ENDED = (State.DELETED, State.FAILED)


def provisional_id() -> str:
    return PROVISIONAL_PREFIX + secrets.token_hex(8)


@dataclass(frozen=True)
class PlacementPolicy:
    cpu_overcommit: float  # vCPUs placed per host CPU
    memory_overcommit: float  # MiB placed per MiB of host memory
    # how many more of an organisation's sandboxes a node with the template cached may hold
    # before one that would have to pull it is preferred: a pull costs seconds to minutes
    uncached_penalty: float = 4.0
    # a warm sandbox ready saves a boot (~0.1-1 s): worth less than spreading by one
    cold_penalty: float = 1.0
    retry_after_s: float = RETRY_AFTER_S

    @classmethod
    def from_settings(cls, settings: OvercommitSettings) -> PlacementPolicy:
        return cls(cpu_overcommit=settings.cpu_overcommit, memory_overcommit=settings.memory_overcommit)


@dataclass(frozen=True)
class PlacementRequest:
    sandbox_id: str
    org_id: str
    template: str  # the template's name as nodes report it cached (NodeReport.templates)
    vcpu: int
    memory_mib: int


@dataclass(frozen=True)
class Placement:
    sandbox_id: str
    node_id: str
    address: str  # the node's API


class Placer:
    """Places on the database of ``engine`` (Core statements on a connection: no ORM unit of
    work, whose bookkeeping would cost more CPU than the placement itself)."""

    def __init__(self, engine: AsyncEngine, policy: PlacementPolicy) -> None:
        self.engine = engine
        self.policy = policy
        self._sql = placement_sql.build(engine.dialect.name, policy)

    async def place(self, request: PlacementRequest) -> Placement:
        """Reserve room for the sandbox on the best node; ``ClusterCapacityExhausted`` when no
        up node has room. A sandbox id is placed once (a second place fails: release first)."""
        values = placement_sql.params(request)
        for attempt in range(MAX_ATTEMPTS):
            # the first attempt skips rows other placers hold; later ones wait for them
            if (placed := await self._try(values, skip_locked=attempt == 0)) is not None:
                return Placement(request.sandbox_id, *placed)
            # nothing taken: no node has room, or every one that has was held by another placer
            async with self.engine.connect() as connection:
                if not await connection.scalar(self._sql.any_fits, values):
                    break
        raise ClusterCapacityExhausted(
            f"no node of the cluster has room for {request.vcpu} vCPU and {request.memory_mib} MiB; "
            "retry later",
            retry_after_s=self.policy.retry_after_s,
        )

    async def _try(self, values: dict[str, Any], *, skip_locked: bool) -> tuple[str, str] | None:
        """(node id, address) of the node reserved and recorded, or None when none was taken."""
        sql = self._sql
        async with self.engine.begin() as connection:
            both = sql.place_skipping_locked if skip_locked else sql.place_waiting
            if both is not None:  # PostgreSQL: one statement
                placed = (await connection.execute(both, values)).first()
                return None if placed is None else (placed[0], placed[1])
            reserve = sql.reserve_skipping_locked if skip_locked else sql.reserve_waiting
            chosen = (await connection.execute(reserve, values)).first()
            if chosen is None:
                return None
            await connection.execute(sql.record, {**values, "p_node_id": chosen.id})
            return chosen.id, chosen.address

    async def rename(self, provisional_id: str, sandbox_id: str) -> bool:
        """Put the room placed under ``provisional_id`` (an API replica places before the node
        names the sandbox) under the sandbox's own id; False when nothing was placed under it."""
        async with self.engine.begin() as connection:
            return await self._rename(connection, provisional_id, sandbox_id)

    async def _rename(self, connection: AsyncConnection, provisional_id: str, sandbox_id: str) -> bool:
        which = PlacementRow.sandbox_id == provisional_id
        renamed = await connection.execute(update(PlacementRow).where(which).values(sandbox_id=sandbox_id))
        return bool(renamed.rowcount)

    async def release_ended(self, *, provisional_after_s: float = PROVISIONAL_TTL_S) -> int:
        """Give back the room of every sandbox that ended (deleted, or failed with its node) and
        of provisional placements older than ``provisional_after_s`` (their create never
        reported back: the replica died, or the node never answered); how many were released.
        Run by one process of the cluster (the liveness job's leader)."""
        cutoff = utcnow() - dt.timedelta(seconds=provisional_after_s)
        ended = exists().where(SandboxRow.id == PlacementRow.sandbox_id, SandboxRow.state.in_(ENDED))
        stale = and_(PlacementRow.sandbox_id.startswith(PROVISIONAL_PREFIX), PlacementRow.placed_at < cutoff)
        forget = (
            delete(PlacementRow)
            .where(or_(ended, stale))
            .returning(PlacementRow.node_id, PlacementRow.vcpu, PlacementRow.memory_mib)
        )
        async with self.engine.begin() as connection:
            released = (await connection.execute(forget)).all()
            totals: dict[str, tuple[int, int]] = {}
            for node_id, vcpu, memory_mib in released:
                held = totals.get(node_id, (0, 0))
                totals[node_id] = (held[0] + vcpu, held[1] + memory_mib)
            for node_id, (vcpu, memory_mib) in sorted(totals.items()):  # one lock order: no deadlock
                values = {"p_node_id": node_id, "p_vcpu": vcpu, "p_memory_mib": memory_mib}
                await connection.execute(self._sql.give_back, values)
        return len(released)

    async def release(self, sandbox_id: str) -> bool:
        """Give the sandbox's room back to its node; False when it held none (released already,
        or never placed)."""
        async with self.engine.begin() as connection:
            return await self._release(connection, sandbox_id)

    async def transfer(self, provisional_id: str, sandbox_id: str) -> bool:
        """A sandbox that moved to another node: the room it held (if any) given back and the
        room placed for it on the new node under ``provisional_id`` put under its id, in one
        transaction (a mover that dies in between leaves the ledger as it was, never with both
        rooms given back). False, and nothing changed, when nothing was placed under
        ``provisional_id``."""
        async with self.engine.connect() as connection, connection.begin() as transaction:
            await self._release(connection, sandbox_id)
            if await self._rename(connection, provisional_id, sandbox_id):
                return True
            await transaction.rollback()  # the room the sandbox holds stays held
        return False

    async def _release(self, connection: AsyncConnection, sandbox_id: str) -> bool:
        gone = (await connection.execute(self._sql.forget, {"p_sandbox_id": sandbox_id})).first()
        if gone is None:
            return False
        await connection.execute(
            self._sql.give_back,
            {"p_node_id": gone.node_id, "p_vcpu": gone.vcpu, "p_memory_mib": gone.memory_mib},
        )
        return True

    @contextlib.asynccontextmanager
    async def reservation(self, request: PlacementRequest) -> AsyncIterator[Placement]:
        """Placed for the block; released again if the block fails (the sandbox was not made)."""
        placement = await self.place(request)
        try:
            yield placement
        except BaseException:
            await self.release(request.sandbox_id)
            raise
