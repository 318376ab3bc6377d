"""An organisation's admission claims in the database, for a cluster: the check-then-claim of
``atoll.server.quota`` runs under a row lock on the organisation (``SELECT ... FOR UPDATE``), so
two processes admitting sandboxes of one organisation take turns and each sees the other's
claims. (One host keeps its claims in memory: there is no other process to see them.)"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from atoll.store.models import AdmissionClaimRow, Org, SandboxRow, utcnow


class SharedClaims:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s  # a claim outlives its holder's crash by at most this

    async def claim(self, org_id: str, sandbox_id: str, limit: int, not_counted: Iterable[str]) -> str | None:
        """A claim's id, or None when the org's counted sandboxes and live claims reach ``limit``."""
        now = utcnow()
        async with self.sessions.begin() as s:
            # the org's row lock: admissions of one org, in any process, one at a time
            await s.execute(select(Org.id).where(Org.id == org_id).with_for_update())
            await s.execute(
                delete(AdmissionClaimRow).where(
                    AdmissionClaimRow.org_id == org_id, AdmissionClaimRow.expires_at <= now
                )
            )
            recorded = select(SandboxRow.id).where(
                SandboxRow.org_id == org_id, SandboxRow.state.not_in(list(not_counted))
            )
            claimed_only = select(func.count()).where(
                AdmissionClaimRow.org_id == org_id, AdmissionClaimRow.sandbox_id.not_in(recorded)
            )
            count = int(await s.scalar(select(func.count()).select_from(recorded.subquery())) or 0)
            count += int(await s.scalar(claimed_only) or 0)
            if count >= limit:
                return None
            claim_id = "clm_" + secrets.token_hex(8)
            s.add(
                AdmissionClaimRow(
                    id=claim_id, org_id=org_id, sandbox_id=sandbox_id,
                    expires_at=now + dt.timedelta(seconds=self.ttl_s),
                )
            )  # fmt: skip
            return claim_id

    async def release(self, claim_id: str) -> None:
        async with self.sessions.begin() as s:
            await s.execute(delete(AdmissionClaimRow).where(AdmissionClaimRow.id == claim_id))
