"""Queries the control plane runs. Every sandbox query is scoped to one organisation,
so one org can never see or touch another's rows."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll._states import State
from atoll.store.key_streams import KeyStreams
from atoll.store.models import ApiKey, Org, SandboxRow, SnapshotRow, utcnow

KEY_PREFIX = "atl_"
KEY_CACHE_TTL_S = 5.0
KEY_CACHE_SIZE = 10_000


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# states in which a sandbox's processes exist, so it draws on the host's budget (``_usage``)
HOLDING_STATES = frozenset(
    {State.STARTING, State.RUNNING, State.UNPAUSING, State.SNAPSHOTTING, State.STOPPING, State.DELETING}
)


def holds_resources(state: str, pause_kind: str | None) -> bool:
    """Whether a sandbox counts against the host's budget (the same rule as ``_usage``'s SQL)."""
    if state == State.PAUSED:
        return pause_kind is not None and pause_kind != "checkpoint"
    return state in HOLDING_STATES


def _is_sqlite(sessions: async_sessionmaker[AsyncSession]) -> bool:
    bind = sessions.kw.get("bind")
    return bind is not None and bind.dialect.name == "sqlite"


class Repository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, node_id: str | None = None) -> None:
        self.sessions = sessions
        # In a cluster (PostgreSQL) each node owns the sandboxes its host runs: new rows carry
        # its id, and what concerns its host (reconciliation, expiry, its budget) sees only
        # those. Reads by id and the org's listings stay cluster-wide. None: one host, all rows.
        self.node_id = node_id
        self._key_cache: dict[str, tuple[str, float]] = {}  # key hash -> (org id, valid until)
        self.key_streams = KeyStreams()  # what each key has open; revoking one ends them
        # SQLite has one writer at a time, and a connection that finds the database locked
        # sleeps in its busy handler, backing off up to 100 ms a try: under a burst of creates
        # those sleeps were most of the latency. Sandbox writes of this process take turns here
        # instead (FIFO), so none waits on SQLite's lock. SQLite also means this process is the
        # only writer, so the sandboxes' resource usage is kept in memory too (``_holding``,
        # loaded on first use, updated by every sandbox write): admission needs no query.
        self._single_writer = _is_sqlite(sessions)
        self._write_turn = asyncio.Lock()
        self._holding: dict[str, tuple[int, int]] | None = None  # sandbox id -> (vCPUs, MiB)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A write transaction (serialised with this process's other sandbox writes on SQLite)."""
        if not self._single_writer:
            async with self.sessions.begin() as s:
                yield s
            return
        async with self._write_turn, self.sessions.begin() as s:
            yield s

    def _track(self, row: SandboxRow) -> None:
        if self._holding is None:
            return
        if holds_resources(row.state, row.pause_kind):
            self._holding[row.id] = (row.vcpu, row.memory)
        else:
            self._holding.pop(row.id, None)

    # organisations and keys -------------------------------------------------------------
    async def ensure_org(self, org_id: str, name: str) -> None:
        async with self._writing() as s:
            if await s.get(Org, org_id) is None:
                s.add(Org(id=org_id, name=name))

    async def add_key(self, org_id: str, raw_key: str, name: str | None = None) -> bool:
        """Register ``raw_key`` for the org, called ``name`` if given; False when it already
        exists."""
        digest = hash_key(raw_key)
        async with self._writing() as s:
            if await s.scalar(select(ApiKey).where(ApiKey.key_hash == digest)) is not None:
                return False
            key_id = "key_" + secrets.token_hex(8)
            s.add(ApiKey(id=key_id, org_id=org_id, key_hash=digest, prefix=raw_key[:8], name=name))
            return True

    async def rename_key(self, org_id: str, key_id: str, name: str | None) -> bool:
        """Name (or, with None, unname) the org's key ``key_id``; False when it has no such key."""
        async with self._writing() as s:
            row = await s.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
            if row is None:
                return False
            row.name = name
            return True

    async def list_keys(self, org_id: str) -> list[ApiKey]:
        """The org's keys, newest first (their prefix, never the secret: only its hash is kept)."""
        async with self.sessions() as s:
            rows = await s.scalars(
                select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at.desc(), ApiKey.id)
            )
            return list(rows)

    async def revoke_key(self, org_id: str, key_id: str) -> str | None:
        """Delete the org's key ``key_id`` and forget it in the cache, so it is refused from
        the next request on; its hash (to end what it opened elsewhere), or None when the org
        has no such key."""
        async with self._writing() as s:
            row = await s.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
            if row is None:
                return None
            digest = row.key_hash
            await s.delete(row)
        self._key_cache.pop(digest, None)
        self.key_streams.revoke(digest)
        return digest

    async def count_keys(self) -> int:
        async with self.sessions() as s:
            return int(await s.scalar(select(func.count()).select_from(ApiKey)) or 0)

    async def org_for_key(self, raw_key: str) -> str | None:
        """The key's org. Hits are remembered for a few seconds (by hash: every request is
        authenticated, and this keeps a database round trip off each one); misses never are."""
        digest = hash_key(raw_key)
        cached = self._key_cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.sessions() as s:
            row = await s.scalar(select(ApiKey.org_id).where(ApiKey.key_hash == digest))
        if row is None:
            return None
        if len(self._key_cache) >= KEY_CACHE_SIZE:
            self._key_cache.clear()
        self._key_cache[digest] = (str(row), now + KEY_CACHE_TTL_S)
        return str(row)

    # sandboxes --------------------------------------------------------------------------
    def _on_this_node(self) -> ColumnElement[bool]:
        """The rows this node's host holds (every row when not in a cluster)."""
        return true() if self.node_id is None else SandboxRow.node_id == self.node_id

    async def add_sandbox(self, row: SandboxRow) -> None:
        if row.node_id is None:
            row.node_id = self.node_id
        async with self._writing() as s:
            s.add(row)
        self._track(row)

    async def get_sandbox(self, sandbox_id: str, org_id: str | None = None) -> SandboxRow | None:
        async with self.sessions() as s:
            row = await s.get(SandboxRow, sandbox_id)
        if row is None or row.state == State.DELETED or (org_id is not None and row.org_id != org_id):
            return None
        return row

    async def update_sandbox(self, sandbox_id: str, **values: Any) -> SandboxRow:
        if "state" in values:
            values["state_change_time"] = utcnow()
        statement = update(SandboxRow).where(SandboxRow.id == sandbox_id).values(**values)
        async with self._writing() as s:
            row = (await s.scalars(statement.returning(SandboxRow))).one()  # one round trip
        self._track(row)
        return row

    async def list_sandboxes(
        self,
        org_id: str,
        *,
        state: str | None = None,
        sort: str = "created_at",
        descending: bool = True,
        page: int = 1,
        page_size: int = 20,
    ) -> tuple[Sequence[SandboxRow], int]:
        query = select(SandboxRow).where(SandboxRow.org_id == org_id, SandboxRow.state != State.DELETED)
        if state is not None:
            query = query.where(SandboxRow.state == state)
        column = SandboxRow.state if sort == "state" else SandboxRow.created_at
        ordered = query.order_by(column.desc() if descending else column.asc(), SandboxRow.id)
        async with self.sessions() as s:
            total = int(await s.scalar(select(func.count()).select_from(query.subquery())) or 0)
            rows = (await s.scalars(ordered.offset((page - 1) * page_size).limit(page_size))).all()
        return rows, total

    async def resource_usage(self) -> tuple[int, int]:
        """(vCPUs, MiB) claimed by sandboxes whose processes exist (see ``atoll.server.capacity``)."""
        if not self._single_writer:
            async with self.sessions() as s:
                return await _usage(s, self._on_this_node())
        if self._holding is None:
            async with self._write_turn:  # no write lands between the load and the ledger
                if self._holding is None:
                    async with self.sessions() as s:
                        query = select(SandboxRow).where(
                            SandboxRow.state != State.DELETED, self._on_this_node()
                        )
                        rows = (await s.scalars(query)).all()
                    self._holding = {
                        r.id: (r.vcpu, r.memory) for r in rows if holds_resources(r.state, r.pause_kind)
                    }
        held = self._holding.values()
        return sum(v for v, _ in held), sum(m for _, m in held)

    async def count_active(self, org_id: str) -> int:
        async with self.sessions() as s:
            query = select(func.count()).where(
                SandboxRow.org_id == org_id,
                SandboxRow.state.not_in([State.DELETED, State.STOPPED, State.FAILED]),
            )
            return int(await s.scalar(query) or 0)

    async def not_deleted(self) -> Sequence[SandboxRow]:
        async with self.sessions() as s:
            query = select(SandboxRow).where(SandboxRow.state != State.DELETED, self._on_this_node())
            return (await s.scalars(query)).all()

    async def expired(self) -> Sequence[SandboxRow]:
        now = utcnow()
        async with self.sessions() as s:
            query = select(SandboxRow).where(
                SandboxRow.timeout_at.is_not(None),
                SandboxRow.timeout_at <= now,
                SandboxRow.state.in_([State.RUNNING, State.PAUSED]),
                self._on_this_node(),
            )
            return (await s.scalars(query)).all()


class SnapshotRepository:
    """Snapshot rows, scoped to one organisation like everything else."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def add(self, row: SnapshotRow) -> None:
        async with self.sessions.begin() as s:
            s.add(row)

    async def get(self, org_id: str, snapshot_id: str) -> SnapshotRow | None:
        async with self.sessions() as s:
            row = await s.get(SnapshotRow, snapshot_id)
        return row if row is not None and row.org_id == org_id else None

    async def by_name(self, org_id: str, name: str) -> SnapshotRow | None:
        async with self.sessions() as s:
            query = select(SnapshotRow).where(SnapshotRow.org_id == org_id, SnapshotRow.name == name)
            return await s.scalar(query)

    async def get_any(self, snapshot_id: str) -> SnapshotRow | None:
        async with self.sessions() as s:
            return await s.get(SnapshotRow, snapshot_id)

    async def delete(self, snapshot_id: str) -> None:
        async with self.sessions.begin() as s:
            row = await s.get(SnapshotRow, snapshot_id)
            if row is not None:
                await s.delete(row)

    async def in_use(self, snapshot_id: str) -> bool:
        """A live sandbox runs over its layers, or a newer snapshot builds on it."""
        async with self.sessions() as s:
            sandboxes = await s.scalar(
                select(func.count()).where(
                    SandboxRow.base_snapshot_id == snapshot_id, SandboxRow.state != State.DELETED
                )
            )
            children = await s.scalar(
                select(func.count()).where(SnapshotRow.parent_snapshot_id == snapshot_id)
            )
        return bool(sandboxes) or bool(children)

    async def list(
        self,
        org_id: str,
        *,
        query: str = "",
        sort: str = "created_at",
        descending: bool = True,
        page: int = 1,
        page_size: int = 20,
    ) -> tuple[Sequence[SnapshotRow], int]:
        statement = select(SnapshotRow).where(SnapshotRow.org_id == org_id)
        if query:
            statement = statement.where(SnapshotRow.name.contains(query, autoescape=True))
        column = SnapshotRow.template_id if sort == "template_id" else SnapshotRow.created_at
        ordered = statement.order_by(column.desc() if descending else column.asc(), SnapshotRow.id)
        async with self.sessions() as s:
            total = int(await s.scalar(select(func.count()).select_from(statement.subquery())) or 0)
            rows = (await s.scalars(ordered.offset((page - 1) * page_size).limit(page_size))).all()
        return rows, total

    async def all_ids(self) -> set[str]:
        async with self.sessions() as s:
            return set((await s.scalars(select(SnapshotRow.id))).all())


async def _usage(session: AsyncSession, scope: ColumnElement[bool]) -> tuple[int, int]:
    holding = or_(
        SandboxRow.state.in_(
            [
                State.STARTING,
                State.RUNNING,
                State.UNPAUSING,
                State.SNAPSHOTTING,
                State.STOPPING,
                State.DELETING,
            ]
        ),
        and_(SandboxRow.state == State.PAUSED, SandboxRow.pause_kind != "checkpoint"),
    )
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(SandboxRow.vcpu), 0), func.coalesce(func.sum(SandboxRow.memory), 0)
            ).where(holding, scope)
        )
    ).one()
    return int(row[0]), int(row[1])
