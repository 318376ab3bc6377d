"""The API rate limit's ledger on PostgreSQL, shared by a cluster's processes (docs/cluster.md):
one row per API key (``rate_windows``, keyed by the key's SHA-256) with its current window and
how many of the window's requests the processes have been granted.

A process takes the window's requests in small **leases** and spends them locally
(``atoll.server.rate_leases``), so most requests cost no round trip. A lease is taken by ONE
statement (an upsert under the row's lock): it opens a new window when the old one has ended
(the database's clock, never a process's), grants ``lease_size(limit, granted)`` and adds it to
``granted``. The sum granted in a window thus never exceeds the limit, whichever processes ask
and however they interleave. Ended rows are reused by the key's next request; ``sweep`` drops
those nobody reused."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from atoll.cluster.leader import lock_key

MAX_LEASE = 20  # at most this many requests per lease ...
LEASE_FRACTION = 4  # ... and at most a quarter of what the window has left (at least 1)
SWEEP_BATCH = 10_000  # rows deleted per statement by a sweep

# the lease for a window of which ``g`` requests were granted (mirrors ``lease_size``)
_LEASE = (
    "GREATEST(0, LEAST(CAST(:max_lease AS integer), GREATEST(1, (CAST(:limit AS integer) - {g}) / {f}), "
    "CAST(:limit AS integer) - {g}))"
)
_ENDED = "w.window_end <= statement_timestamp()"
_UPSERT = text(
    f"""
    INSERT INTO rate_windows AS w (key_hash, window_start, window_end, granted, lease)
    VALUES (:key_hash, statement_timestamp(),
            statement_timestamp() + make_interval(secs => CAST(:window_s AS double precision)),
            {_LEASE.format(g=0, f=LEASE_FRACTION)}, {_LEASE.format(g=0, f=LEASE_FRACTION)})
    ON CONFLICT (key_hash) DO UPDATE SET
        window_start = CASE WHEN {_ENDED} THEN excluded.window_start ELSE w.window_start END,
        window_end = CASE WHEN {_ENDED} THEN excluded.window_end ELSE w.window_end END,
        granted = CASE WHEN {_ENDED} THEN excluded.granted
                       ELSE w.granted + {_LEASE.format(g="w.granted", f=LEASE_FRACTION)} END,
        lease = CASE WHEN {_ENDED} THEN excluded.lease
                     ELSE {_LEASE.format(g="w.granted", f=LEASE_FRACTION)} END
    RETURNING lease, granted, EXTRACT(EPOCH FROM window_end - statement_timestamp())
    """
)  # SET's expressions read the row as it was: ``lease`` is what this statement granted
_SWEEP = text(
    """
    DELETE FROM rate_windows WHERE key_hash IN (
        SELECT key_hash FROM rate_windows WHERE window_end < statement_timestamp()
        LIMIT :batch FOR UPDATE SKIP LOCKED)
    """
)
SWEEP_LOCK = lock_key("atoll:rate-windows-sweep")


def lease_size(limit: int, granted: int, *, max_lease: int = MAX_LEASE) -> int:
    """What a lease grants when ``granted`` of the window's ``limit`` requests are already out:
    up to ``max_lease`` or a quarter of what is left, whichever is smaller, at least 1 while
    anything is left, never more than what is left."""
    left = limit - granted
    return max(0, min(max_lease, max(1, left // LEASE_FRACTION), left))


@dataclass(frozen=True)
class Grant:
    lease: int  # requests this process may let through (0: the window is spent)
    granted: int  # the window's requests granted so far, to every process
    seconds_left: float  # until the window ends (the database's clock)


class RateLedger:
    def __init__(self, engine: AsyncEngine, *, max_lease: int = MAX_LEASE) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("the shared rate ledger runs on PostgreSQL (one host counts in memory)")
        self.engine = engine
        self.max_lease = max_lease

    async def lease(self, key_hash: str, *, limit: int, window_s: float) -> Grant:
        """Take a lease of the key's current window (opening a new one when it has ended)."""
        params = {"key_hash": key_hash, "limit": limit, "window_s": window_s, "max_lease": self.max_lease}
        async with self.engine.begin() as connection:
            row = (await connection.execute(_UPSERT, params)).one()
        return Grant(lease=int(row[0]), granted=int(row[1]), seconds_left=float(row[2]))

    async def sweep(self) -> int:
        """Delete ended windows (a batch); 0 when another process is sweeping right now."""
        async with self.engine.begin() as connection:
            took = await connection.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK}
            )
            if not took:
                return 0
            return (await connection.execute(_SWEEP, {"batch": SWEEP_BATCH})).rowcount
