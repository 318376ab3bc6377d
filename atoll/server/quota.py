"""The organisation's sandbox limit (``Settings.max_sandboxes_per_org``): one check for create,
start and restore.

A sandbox counts from the moment it is admitted until its processes are gone: recorded in a
state with processes (or about to have them: ``starting``), or brand-new and still booting
before its record exists. Admission is check-then-claim under one lock, so concurrent creates,
starts and restores never all see the same free room; the claim is held until the sandbox's
record counts for itself (or it failed, and the room is free again). A claimed sandbox whose
record already counts is counted once.

On PostgreSQL (a cluster) the claims are rows every process sees, taken under a row lock on the
organisation (``atoll.store.claims``), so the limit holds across processes; on SQLite (one
process) they stay in memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select

from atoll._exceptions import APIError, ConflictError, RateLimitError
from atoll._states import RESTING_WITHOUT_PROCESSES, State
from atoll.store.claims import SharedClaims
from atoll.store.models import SandboxRow
from atoll.store.repo import Repository

# a record in one of these states does not count toward the limit
NOT_COUNTED = frozenset({State.DELETED, *RESTING_WITHOUT_PROCESSES})
# a shared claim whose process died is let go after this (a claim is held only while a sandbox
# boots, which its transition timeout bounds)
SHARED_CLAIM_TTL_S = 900.0


@dataclass(eq=False)  # claims are told apart by identity
class Claim:
    org_id: str
    sandbox_id: str  # may change before the record is written (a warm sandbox's id is taken)


class OrgQuota:
    def __init__(self, repo: Repository, limit: int | None) -> None:
        self.repo = repo
        self.limit = limit
        self._admission = asyncio.Lock()
        self._claims: list[Claim] = []
        bind = repo.sessions.kw.get("bind")
        self._shared = (
            SharedClaims(repo.sessions, ttl_s=SHARED_CLAIM_TTL_S)
            if bind is not None and bind.dialect.name == "postgresql"
            else None
        )

    async def _counted_ids(self, org_id: str) -> set[str]:
        async with self.repo.sessions() as s:
            query = select(SandboxRow.id).where(
                SandboxRow.org_id == org_id, SandboxRow.state.not_in(list(NOT_COUNTED))
            )
            return set((await s.scalars(query)).all())

    async def count(self, org_id: str) -> int:
        """Sandboxes of ``org_id`` that count: recorded ones with processes, and claimed ones."""
        # claims first: one released meanwhile was recorded before, so the query sees its record
        claimed = {c.sandbox_id for c in self._claims if c.org_id == org_id}
        recorded = await self._counted_ids(org_id)
        return len(recorded | claimed)

    @contextlib.asynccontextmanager
    async def claim(
        self, org_id: str, sandbox_id: str, *, retry_after_s: float | None = None
    ) -> AsyncIterator[Claim]:
        """Room for one more sandbox of ``org_id``, held until the block ends: the block records
        the sandbox in a counted state (or fails). Past the limit: 409, or 429 with
        ``retry_after_s`` when given (start and restore say when to retry)."""
        claim = Claim(org_id, sandbox_id)
        if self.limit is None:
            yield claim
            return
        if self._shared is not None:
            claim_id = await self._shared.claim(org_id, sandbox_id, self.limit, NOT_COUNTED)
            if claim_id is None:
                raise self._refusal(retry_after_s)
            try:
                yield claim
            finally:
                await self._shared.release(claim_id)
            return
        async with self._admission:
            if await self.count(org_id) >= self.limit:
                raise self._refusal(retry_after_s)
            self._claims.append(claim)
        try:
            yield claim
        finally:
            self._claims.remove(claim)

    def _refusal(self, retry_after_s: float | None) -> APIError:
        message = f"organisation limit reached: at most {self.limit} sandboxes"
        if retry_after_s is None:
            return ConflictError(message)
        return RateLimitError(message, retry_after=retry_after_s)
