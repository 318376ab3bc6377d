"""Start-up reconciliation: make the host match the records after a crash.

Sandboxes whose processes survived are adopted. Half-done transitions are finished (a create
that never booted is deleted, a delete or stop is completed). Anything of this instance on the
host that no record owns (containers, cgroups, mounts, network namespaces, veths, sandbox
directories) is removed. The network pool's own sweep covers netns and veths."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field

from atoll._exceptions import ServerError
from atoll._states import LIVE_STATES, State
from atoll.network.egress import Attachment
from atoll.runtime import overlay
from atoll.server.manager import SandboxManager

log = logging.getLogger("atoll.reconcile")


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


async def reconcile(manager: SandboxManager) -> Report:
    report = Report()
    # every backend a record names, or that has state on this host, is swept
    for row in await manager.repo.not_deleted():
        try:
            manager.backend_for(row)
        except ServerError as exc:
            log.error("sandbox %s: %s", row.id, exc)
    backends = list(manager.backends.values())
    alive_on = {backend.name: await backend.running_ids() for backend in backends}
    alive = set().union(*alive_on.values())
    keep: set[str] = set()
    held_slots: set[int] = set()

    for row in await manager.repo.not_deleted():
        state = State(row.state)
        if state == State.PAUSED and row.pause_kind == "checkpoint":
            keep.add(row.id)  # no processes on purpose: its memory is on disk
            if row.net_slot:
                held_slots.add(row.net_slot)
            report.adopted.append(row.id)
            continue
        if state in LIVE_STATES and row.id in alive:
            keep.add(row.id)
            if row.net_slot:
                held_slots.add(row.net_slot)
            if state in (State.UNPAUSING, State.SNAPSHOTTING):
                # the transition was cut short; the container is whatever the runtime says it is
                await manager.backend_for(row).resume(row.id)
                await manager.repo.update_sandbox(row.id, state=State.RUNNING, pause_kind=None)
            report.adopted.append(row.id)
            continue
        if row.net_slot:
            held_slots.add(row.net_slot)  # released by the teardown below, not by the sweep
    report.removed += await manager.pool.start(held_slots)
    if manager.egress is not None:  # per-sandbox egress rules: the adopted get theirs again, no other stays
        report.removed += await manager.egress.reconcile(
            [
                Attachment(
                    sandbox_id=row.id,
                    org_id=row.org_id,
                    policy=row.network_policy,
                    slot=manager.pool.plan.slot(row.net_slot),
                    sandbox_dir=manager.sandbox_dir(row.id),
                )
                for row in await manager.repo.not_deleted()
                if row.id in keep and row.net_slot
            ]
        )

    for row in await manager.repo.not_deleted():
        if row.id in keep:
            continue
        state = State(row.state)
        if state == State.STOPPED:
            continue
        # starting (never finished), deleting, stopping, or live but its processes are gone
        if state in (State.STARTING, State.DELETING):
            await manager.repo.update_sandbox(row.id, state=State.DELETING)
            await manager._teardown(row, keep_disk=False)
            await manager.repo.update_sandbox(row.id, state=State.DELETED, net_slot=None, timeout_at=None)
        else:
            # the host lost its processes (e.g. a reboot): memory is gone, the disk is kept
            await manager._teardown(row, keep_disk=True)
            await manager.repo.update_sandbox(row.id, state=State.STOPPED, net_slot=None, timeout_at=None)
        report.finished.append(row.id)

    known = {row.id for row in await manager.repo.not_deleted()}
    for backend in backends:
        for orphan in sorted(alive_on[backend.name] - keep):
            await backend.halt_by_id(orphan)
            report.removed.append(f"container {orphan}")
        report.removed += [f"cgroup {c}" for c in await backend.orphan_cgroups(keep)]
    sandboxes_dir = manager.settings.sandboxes_dir
    mounted = set(alive) & keep
    for mount_point in overlay.mounts_under(sandboxes_dir):
        sandbox_id = mount_point.relative_to(sandboxes_dir).parts[0]
        if sandbox_id in keep and mount_point == manager.sandbox_dir(sandbox_id) / "disk":
            continue  # its own filesystem (a sandbox paused by checkpoint keeps it mounted)
        if sandbox_id not in mounted:
            overlay.unmount(mount_point)
            report.removed.append(f"mount {mount_point}")
    if sandboxes_dir.exists():
        for directory in sandboxes_dir.iterdir():
            if directory.name not in known:
                shutil.rmtree(directory, ignore_errors=True)
                report.removed.append(f"dir {directory.name}")
    log.info(
        "reconciled: %d adopted, %d finished, %d leftovers removed",
        len(report.adopted),
        len(report.finished),
        len(report.removed),
    )
    return report
