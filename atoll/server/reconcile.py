"""Start-up reconciliation: make the host match the records after a crash.

Sandboxes whose processes survived are adopted. Half-done transitions are finished, each
through the state table (``SandboxManager.move``): a start cut short is stopped with its disk
kept, as a failed start would be; a delete or stop is completed; a pause cut short after CRIU
wrote a complete image, marked so, is paused, and any other checkpoint image is removed. Anything of
this instance on the host that no record owns (containers, cgroups, mounts, network namespaces,
veths, sandbox directories) is removed. The network pool's own sweep covers netns and veths.

One sandbox never stops the server from starting: a sandbox whose repair fails is quarantined
(its processes removed, its disk kept for inspection, the record ``failed`` with the reason as
``state_reason``, also logged and listed in the report) and reconciliation goes on with the
next. A sandbox whose processes are simply gone (a reboot) is not failed but ``lost``:
``stopped``, its disk intact, ``start`` boots it again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

from atoll._exceptions import ServerError
from atoll._states import LIVE_STATES, Event, State
from atoll.network.egress import Attachment
from atoll.network.policy import EgressPolicy
from atoll.runtime import overlay, userns
from atoll.runtime.base import checkpoint_complete
from atoll.runtime.trees import remove_host_tree
from atoll.server import transitions
from atoll.server.manager import SandboxManager
from atoll.store.models import SandboxRow

log = logging.getLogger("atoll.reconcile")


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # "<id>: <reason>"


async def _quarantine(manager: SandboxManager, row: SandboxRow, reason: str, report: Report) -> None:
    """The sandbox could not be repaired: its processes go, its disk stays, it is ``failed``."""
    reason = f"start-up reconciliation could not repair it: {reason}"[:500]
    report.quarantined.append(f"{row.id}: {reason}")
    try:
        await transitions.quarantine(manager, row, reason)
    except Exception:  # the record could not even be written: the next start tries again
        log.exception("sandbox %s: quarantine failed", row.id)


async def reconcile(manager: SandboxManager) -> Report:
    report = Report()
    host = manager.host
    # every backend a record names, or that has state on this host, is swept
    for row in await manager.repo.not_deleted():
        try:
            host.backend_for(row)
        except ServerError as exc:
            log.error("sandbox %s: %s", row.id, exc)
    backends = list(host.backends.values())
    for backend in backends:  # first: one still running could add a container after the listing
        report.removed += await backend.stop_leftover_commands()
    alive_on = {backend.name: await backend.running_ids() for backend in backends}
    alive = set().union(*alive_on.values())
    keep: set[str] = set()
    held_slots: set[int] = set()
    unrepaired: dict[str, str] = {}  # sandbox id -> why it could not be repaired

    for row in await manager.repo.not_deleted():
        state = State(row.state)
        if state == State.RUNNING and checkpoint_complete(host.checkpoint_dir(row.id)):
            # killed while pausing, after the save had finished: the image is whole, so it is
            # paused. gVisor saves a paused sandbox and halts it after: a kill in between leaves
            # it alive (and paused), which the image supersedes.
            if row.id in alive and await _attempt(
                f"halting {row.id} after its checkpoint", host.backend_for(row).halt_by_id(row.id)
            ):
                alive.discard(row.id)
            if row.id not in alive:
                row = await manager.move(row, Event.PAUSE, pause_kind="checkpoint")
                state = State(row.state)
                log.warning("sandbox %s: its pause was cut short after the checkpoint; it is paused", row.id)
        if state == State.PAUSED and row.pause_kind == "checkpoint":
            work = host.checkpoint_dir(row.id).with_name("checkpoint.work")
            await _attempt(f"removing {work}", asyncio.to_thread(remove_host_tree, work))
            keep.add(row.id)  # no processes on purpose: its memory is on disk
            if row.net_slot:
                held_slots.add(row.net_slot)
            report.adopted.append(row.id)
            continue
        if row.net_slot:
            held_slots.add(row.net_slot)  # an adopted one's, or released by the teardown below
        if state in LIVE_STATES and row.id in alive:
            try:
                if state in (State.UNPAUSING, State.SNAPSHOTTING):
                    await _finish_cut_short(manager, row, state)
            except Exception as exc:  # not adopted: quarantined below
                log.error("sandbox %s could not be adopted: %s", row.id, exc)
                unrepaired[row.id] = f"finishing its {state.value} failed: {type(exc).__name__}: {exc}"
                continue
            keep.add(row.id)
            report.adopted.append(row.id)
    for row in await manager.repo.not_deleted():
        if row.id not in keep or row.pause_kind != "checkpoint":
            # a checkpoint no paused sandbox stands on: cut short (no marker), or already used
            if host.checkpoint_dir(row.id).exists():
                what = f"checkpoint of {row.id}"
                if await _attempt(f"removing the {what}", asyncio.to_thread(host.discard_checkpoint, row.id)):
                    report.removed.append(what)
    report.removed += await host.pool.start(held_slots)
    if host.egress is not None:  # per-sandbox egress rules: the adopted get theirs again, no other stays
        report.removed += await host.egress.reconcile(
            [
                Attachment(
                    sandbox_id=row.id,
                    org_id=row.org_id,
                    policy=EgressPolicy.compile(row.network_policy),
                    slot=host.pool.plan.slot(row.net_slot),
                    sandbox_dir=host.sandbox_dir(row.id),
                )
                for row in await manager.repo.not_deleted()
                if row.id in keep and row.net_slot
            ]
        )

    for row in await manager.repo.not_deleted():
        if row.id in keep:
            continue
        state = State(row.state)
        if state in (State.STOPPED, State.FAILED):
            continue  # no processes; a failed one keeps its disk and reason until deleted
        if row.id in unrepaired:
            await _quarantine(manager, row, unrepaired[row.id], report)
            continue
        # starting (never finished), deleting, stopping, or live but its processes are gone
        try:
            if state == State.DELETING:
                await host.teardown(row, keep_disk=False)
                await manager.move(row, Event.DELETED, net_slot=None, timeout_at=None)
            elif state == State.STARTING:  # a start cut short: as a failed start, its disk kept
                await host.teardown(row, keep_disk=True)
                reason = "the server stopped while it was starting"
                await manager.move(row, Event.FAILED, reason=reason, net_slot=None, timeout_at=None)
            else:
                # the host lost its processes (e.g. a reboot): memory is gone, the disk is kept
                await host.teardown(row, keep_disk=True)
                await manager.move(row, Event.LOST, net_slot=None, timeout_at=None)
        except Exception as exc:
            await _quarantine(manager, row, f"{type(exc).__name__}: {exc}", report)
            continue
        report.finished.append(row.id)

    known = {row.id for row in await manager.repo.not_deleted()}
    # leftovers: each removal on its own, a failure is logged and the next one tried
    for backend in backends:
        for orphan in sorted(alive_on[backend.name] - keep):
            if await _attempt(f"halting container {orphan}", backend.halt_by_id(orphan)):
                report.removed.append(f"container {orphan}")
        try:
            report.removed += [f"cgroup {c}" for c in await backend.orphan_cgroups(keep)]
        except Exception:
            log.exception("removing %s's orphan cgroups failed", backend.name)
    # before the mounts below: a root shown to a user namespace holds the overlay (and its disk)
    # (on the event loop, as show_root: userns.hide_root)
    for orphan in sorted(userns.shown_roots(host.settings.instance) - keep):
        try:
            userns.hide_root(host.settings.instance, orphan)
        except Exception:
            log.exception("hiding %s's root failed", orphan)
            continue
        report.removed.append(f"shown root {orphan}")
    sandboxes_dir = host.settings.sandboxes_dir
    mounted = set(alive) & keep
    for mount_point in overlay.mounts_under(sandboxes_dir):
        sandbox_id = mount_point.relative_to(sandboxes_dir).parts[0]
        if sandbox_id in keep and mount_point == host.sandbox_dir(sandbox_id) / "disk":
            continue  # its own filesystem (a sandbox paused by checkpoint keeps it mounted)
        if sandbox_id not in mounted:
            try:
                overlay.unmount(mount_point)
            except Exception:
                log.exception("unmounting %s failed", mount_point)
                continue
            report.removed.append(f"mount {mount_point}")
    if sandboxes_dir.exists():
        for directory in sandboxes_dir.iterdir():
            if directory.name not in known:
                # sandbox-made trees of any depth: iterative, never shutil.rmtree's recursion
                if await _attempt(f"removing {directory}", asyncio.to_thread(remove_host_tree, directory)):
                    report.removed.append(f"dir {directory.name}")
    log.info(
        "reconciled: %d adopted, %d finished, %d leftovers removed, %d quarantined",
        len(report.adopted),
        len(report.finished),
        len(report.removed),
        len(report.quarantined),
    )
    return report


async def _finish_cut_short(manager: SandboxManager, row: SandboxRow, state: State) -> None:
    """A pause-ending or a snapshot was cut short with the container alive: it may be frozen or
    not (a kill between the record and the freeze); resume (a running one is fine: ``resume``
    asks the runtime)."""
    await manager.host.thaw(row)
    event = Event.RESUMED if state == State.UNPAUSING else Event.FAILED
    await manager.move(row, event, pause_kind=None)


async def _attempt(what: str, work: Awaitable[object]) -> bool:
    try:
        await work
    except Exception:
        log.exception("%s failed", what)
        return False
    return True
