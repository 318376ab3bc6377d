"""Per-organisation snapshot quota, in bytes of blocks used and in inodes.

A snapshot costs the host its blocks and its inodes: 200,000 empty files use 200,000 inodes and
almost no blocks, so both are counted (``du`` walks the tree: a sandbox decides how deep it
goes, the server never recurses) and both are bounded per organisation. The check runs twice:
before the copy, with the source's disk layer as the estimate (a snapshot that cannot fit costs
nothing), and after, with what the copy really used (it is removed if over). Past the quota:
409 naming the quota, what is used and what the snapshot needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from atoll._exceptions import ConflictError
from atoll.runtime.commands import run
from atoll.store.models import SnapshotRow
from atoll.store.repo import SnapshotRepository


@dataclass(frozen=True)
class Usage:
    size_bytes: int = 0
    inodes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.size_bytes + other.size_bytes, self.inodes + other.inodes)


async def measure(path: Path) -> Usage:
    """Blocks used (not apparent sizes) and inodes under ``path``."""
    _, out, _ = await run(["du", "-s", "-B1", "--one-file-system", str(path)], timeout=600)
    _, inodes, _ = await run(["du", "-s", "--inodes", "--one-file-system", str(path)], timeout=600)
    return Usage(int(out.split()[0]), int(inodes.split()[0]))


def recorded_inodes(directory: Path) -> int:
    """A snapshot's inodes, from its manifest (0 for one made before they were counted)."""
    try:
        return int(json.loads((directory / "manifest.json").read_text()).get("inodes", 0))
    except (OSError, ValueError, AttributeError):
        return 0


async def org_usage(repo: SnapshotRepository, root: Path, org_id: str) -> Usage:
    async with repo.sessions() as s:
        query = select(SnapshotRow.id, SnapshotRow.size_bytes).where(SnapshotRow.org_id == org_id)
        rows = (await s.execute(query)).all()
    total = Usage()
    for snapshot_id, size_bytes in rows:
        total += Usage(int(size_bytes or 0), recorded_inodes(root / snapshot_id))
    return total


def check(used: Usage, adding: Usage, *, quota_bytes: int | None, quota_inodes: int | None) -> None:
    if quota_bytes is not None and used.size_bytes + adding.size_bytes > quota_bytes:
        raise ConflictError(
            f"snapshot quota exceeded: the organisation's snapshots may use {quota_bytes} bytes;"
            f" {used.size_bytes} are used and this snapshot needs {adding.size_bytes}"
            " (delete snapshots to make room)"
        )
    if quota_inodes is not None and used.inodes + adding.inodes > quota_inodes:
        raise ConflictError(
            f"snapshot quota exceeded: the organisation's snapshots may hold {quota_inodes} files"
            f" (inodes); {used.inodes} are used and this snapshot needs {adding.inodes}"
            " (delete snapshots to make room)"
        )
