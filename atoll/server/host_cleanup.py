"""What a clean shutdown removes from the host when no sandbox is left to need it.

Sandboxes outlive the server by design (the next one adopts them), so their firewall table,
cgroup parents and run directory stay while any sandbox runs or is paused. With none (every
record stopped or deleted) they are this instance's litter: the nftables table with its hooked
chains, the parent cgroup in every hierarchy, and ``/run/atoll/<instance>``. The next start
creates them again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from atoll._states import State
from atoll.network import firewall
from atoll.runtime import cgroups, lxcfs
from atoll.runtime.trees import remove_host_tree
from atoll.server.settings import Settings
from atoll.store.repo import Repository

log = logging.getLogger("atoll.server")


async def clean_host_if_unused(settings: Settings, repo: Repository) -> list[str]:
    """Remove the instance's host objects if no sandbox holds any; what was removed."""
    rows = await repo.not_deleted()
    holding = [row.id for row in rows if State(row.state) != State.STOPPED]
    if holding:
        log.info("shutdown: %d sandboxes outlive the server; their host objects stay", len(holding))
        return []
    removed: list[str] = []
    await firewall.remove(settings.instance)
    removed.append(f"nft table {firewall.table_name(settings.instance)}")
    removed += [f"cgroup {d}" for d in await asyncio.to_thread(cgroups.remove_parent, settings.cgroup_parent)]
    await lxcfs.stop_if_unused(settings.run_dir)  # its mount is under the run directory
    run_dir = settings.run_dir
    if run_dir.exists():
        if mounted_under(run_dir):
            log.warning("shutdown: %s keeps mounts; left in place", run_dir)
        else:
            await asyncio.to_thread(remove_host_tree, run_dir)
            removed.append(str(run_dir))
    log.info("shutdown: no sandbox left; removed %s", ", ".join(removed))
    return removed


def mounted_under(directory: Path) -> list[str]:
    prefix = f"{directory.resolve()}/"
    mounts: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split(" ", 5)[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix[:-1]:
                mounts.append(point)
    return mounts
