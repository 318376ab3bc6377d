"""Named snapshots: a running sandbox's memory image and disk layer, restorable any number of
times into brand-new sandboxes (each restore is an independent fork).

On disk, ``<data>/snapshots/<id>/`` holds ``image/`` (the CRIU checkpoint), ``upper/`` (the
sandbox's disk changes, frozen at the same instant), ``parent`` (the snapshot this one's disk
builds on, if the source was itself restored) and ``manifest.json``. A restored sandbox runs
over the snapshot's layers without copying them, so a snapshot is in use (409 on delete) while
such a sandbox lives or a newer snapshot builds on it."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from atoll._exceptions import (
    APIError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    ServerError,
)
from atoll._policy import NetworkPolicy
from atoll._states import Event, State
from atoll.network import egress_trust
from atoll.runtime.base import RuntimeBackend
from atoll.runtime.commands import CommandFailed, CommandTimeout, reported_errnos, run
from atoll.runtime.spec import CheckpointFailed, upper_dir
from atoll.runtime.trees import remove_host_tree
from atoll.server import snapshot_copy, snapshot_quota, snapshot_transfer, transitions
from atoll.server.host import new_sandbox_id
from atoll.server.manager import SandboxManager
from atoll.server.snapshot_transfer import SnapshotSource
from atoll.store.models import SandboxRow, SnapshotRow, utcnow
from atoll.store.repo import SnapshotRepository

log = logging.getLogger("atoll.snapshots")


async def remove_dir(path: Path) -> None:
    """Remove a snapshot's directory (sandbox-made trees of any depth); failures are logged."""
    try:
        await asyncio.to_thread(remove_host_tree, path)
    except OSError:
        log.exception("removing %s failed", path)


class SnapshotService:
    def __init__(self, manager: SandboxManager, repo: SnapshotRepository) -> None:
        self.manager = manager
        self.repo = repo
        # in a cluster with a token: tells the other nodes a snapshot was deleted (their copies)
        self.on_deleted: Callable[[str], Awaitable[None]] | None = None

    @property
    def root(self) -> Path:
        return self.manager.settings.snapshots_dir

    @staticmethod
    def _require_checkpointing(backend: RuntimeBackend) -> None:
        if not backend.can_checkpoint:
            raise ConflictError(
                f"snapshots need a checkpointing runtime; this sandbox runs on {backend.name} "
                "(use runsc, or runc with a working CRIU: scripts/setup-criu.sh)"
            )

    async def create(
        self, org_id: str, sandbox_id: str, *, name: str | None, kill_after: bool
    ) -> SnapshotRow:
        manager = self.manager
        self._require_checkpointing(manager.host.backend_for(await manager.get(org_id, sandbox_id)))
        row = await manager.ensure_running(await manager.get(org_id, sandbox_id))
        name = name or f"{sandbox_id}-{utcnow():%Y%m%d%H%M%S%f}"
        if await self.repo.by_name(org_id, name) is not None:
            raise ConflictError(f"a snapshot named {name!r} already exists")
        snapshot_id = "snp" + secrets.token_hex(8)
        directory = self.root / snapshot_id
        settings = manager.settings
        quotas = {
            "quota_bytes": settings.snapshot_quota_bytes,
            "quota_inodes": settings.snapshot_quota_inodes,
        }
        # before anything is copied: the source's disk layer is what the copy will cost
        used = await snapshot_quota.org_usage(self.repo, self.root, org_id)
        source = await snapshot_quota.measure(upper_dir(manager.host.sandbox_dir(row.id)))
        snapshot_quota.check(used, source, **quotas)
        async with manager.transition(row.id):
            row = await manager.move(await manager.get(org_id, sandbox_id), Event.SNAPSHOT)
            try:
                usage = await manager.bounded(
                    "the snapshot",
                    self._capture_measured(row, directory, kill_after=kill_after),
                    timeout_s=settings.snapshot_timeout_s,
                )
                snapshot_quota.check(used, usage, **quotas)  # what the copy really used
            except BaseException as exc:
                # whatever failed, the sandbox leaves ``snapshotting``: no transition outlives it
                reason = f"snapshot failed: {str(exc).strip() or type(exc).__name__}"
                await asyncio.shield(self._abandon(row, directory, reason))
                if isinstance(exc, (CommandFailed, CommandTimeout, CheckpointFailed, OSError)):
                    raise capture_error(exc) from exc
                raise
            snapshot = SnapshotRow(
                id=snapshot_id,
                org_id=org_id,
                name=name,
                source_sandbox_id=row.id,
                parent_snapshot_id=row.base_snapshot_id,
                template_id=row.template_id,
                template_name=row.template_name,
                runtime=row.runtime,
                vcpu=row.vcpu,
                memory=row.memory,
                disk=row.disk,
                env_vars=dict(row.env_vars),
                network_policy=row.network_policy,
                size_bytes=usage.size_bytes,
                inodes=usage.inodes,
                created_at=utcnow(),
            )
            (directory / "manifest.json").write_text(json.dumps(snapshot_manifest(snapshot), indent=2))
            await self.repo.add(snapshot)
            if kill_after:
                await manager.finish_delete(await manager.move(row, Event.DELETE))
            else:
                await manager.move(row, Event.SNAPSHOTTED)
        return snapshot

    async def _abandon(self, row: SandboxRow, directory: Path, reason: str) -> None:
        """Back to ``running`` (resumed, the partial copy removed); a sandbox that cannot be
        resumed, or whose processes are gone, is quarantined: ``failed``, with the reason."""
        manager = self.manager
        await remove_dir(directory)
        try:
            await manager.bounded("resuming after the snapshot", manager.host.thaw(row))
            alive = row.id in await manager.host.backend_for(row).running_ids()
        except Exception as exc:
            await transitions.quarantine(manager, row, f"{reason}; it could not be resumed: {exc}")
            return
        if not alive:
            await transitions.quarantine(manager, row, f"{reason}; its processes were gone afterwards")
            return
        await manager.move(row, Event.FAILED, reason=reason)

    async def _capture_measured(
        self, row: SandboxRow, directory: Path, *, kill_after: bool
    ) -> snapshot_quota.Usage:
        await self._capture(row, directory, kill_after=kill_after)
        return await snapshot_quota.measure(directory)

    async def _capture(self, row: SandboxRow, directory: Path, *, kill_after: bool) -> None:
        """Copy the disk layer while the sandbox runs, then freeze, bring the copy up to date
        (only what changed: ``snapshot_copy``) and checkpoint memory: both describe the same
        instant, and the sandbox is frozen for the catching up, not for the whole copy."""
        backend = self.manager.host.backend_for(row)
        directory.mkdir(parents=True)
        (directory / "parent").write_text(row.base_snapshot_id or "")
        upper = upper_dir(self.manager.host.sandbox_dir(row.id))
        since_ns = snapshot_copy.start_time_ns()
        await snapshot_copy.pre_copy(upper, directory / "upper")
        await backend.pause(row.id)
        frozen_at = time.monotonic()
        try:
            found = await snapshot_copy.catch_up(upper, directory / "upper", since_ns)
            await backend.checkpoint(row.id, directory / "image", leave_running=not kill_after)
        finally:
            if not kill_after:  # not frozen (a freeze cut short by the timeout) is fine
                await self.manager.host.thaw(row)
        egress_trust.keep_ca(self.manager.host.sandbox_dir(row.id), directory)  # for its restores
        log.info(
            "snapshot of %s: frozen %.2f s; %d entries checked, %d copied again, %d removed",
            row.id, time.monotonic() - frozen_at, found.checked, found.copied, found.removed,
        )  # fmt: skip
        # no setuid/setgid file a sandbox planted survives in the store (docs/security.md)
        strip = ["-type", "f", "-perm", "/6000", "-exec", "chmod", "ug-s", "{}", "+"]
        await run(["find", str(directory / "upper"), *strip], timeout=600)

    async def restore(
        self,
        org_id: str,
        snapshot_name: str,
        *,
        auto_pause: bool,
        timeout: int,
        network_policy: NetworkPolicy | None,
        source: SnapshotSource | None = None,
    ) -> SandboxRow:
        snapshot = await self.repo.by_name(org_id, snapshot_name)
        if snapshot is None:
            raise NotFoundError(f"snapshot {snapshot_name!r} not found")
        manager = self.manager
        # an image is restorable only by the runtime that wrote it
        self._require_checkpointing(manager.host.backend_named(snapshot.runtime))
        templates = manager.host.templates
        await templates.ensure(snapshot.template_id)  # an imported one may be on other nodes only
        template = templates.by_id(snapshot.template_id) or templates.get(snapshot.template_name)
        if template is None:
            raise ConflictError(f"template {snapshot.template_name!r} of the snapshot is gone")
        row = SandboxRow(
            id=new_sandbox_id(),
            org_id=org_id,
            template_id=snapshot.template_id,
            template_name=snapshot.template_name,
            runtime=manager.host.backend_named(snapshot.runtime).name,
            vcpu=snapshot.vcpu,
            memory=snapshot.memory,
            disk=snapshot.disk,
            timeout=timeout,
            auto_pause=auto_pause,
            state=State.STARTING,
            env_vars=dict(snapshot.env_vars),
            network_policy=network_policy if network_policy is not None else snapshot.network_policy,
            base_snapshot_id=snapshot.id,
        )
        async with manager.quota.claim(org_id, row.id, retry_after_s=5):  # until its record counts
            if source is not None:  # restored off the snapshot's node: its files (and its parents') first
                await self.copy_from(source, snapshot)
            return await manager.boot_new(row, template, image=self.root / snapshot.id / "image")

    async def copy_from(self, source: SnapshotSource, snapshot: SnapshotRow) -> None:
        """The snapshot's directory and those of the snapshots its disk builds on, from the node
        at ``source`` (those already here are kept)."""
        async with snapshot_transfer.client() as http:
            current: SnapshotRow | None = snapshot
            while current is not None:
                await snapshot_transfer.fetch(http, source.address, source.token, current.id, self.root)
                parent = current.parent_snapshot_id
                current = await self.repo.get_any(parent) if parent else None

    async def get(self, org_id: str, snapshot_id: str) -> SnapshotRow:
        snapshot = await self.repo.get(org_id, snapshot_id)
        if snapshot is None:
            raise NotFoundError("snapshot not found")
        return snapshot

    async def delete(self, org_id: str, snapshot_id: str) -> None:
        snapshot = await self.get(org_id, snapshot_id)
        if await self.repo.in_use(snapshot.id):
            raise ConflictError("snapshot is in use by a sandbox restored from it or by a newer snapshot")
        await self.repo.delete(snapshot.id)
        await remove_dir(self.root / snapshot.id)
        if self.on_deleted is not None:
            await self.on_deleted(snapshot.id)

    async def sweep(self) -> list[str]:
        """Remove snapshot directories no record owns (a crash mid-snapshot)."""
        if not self.root.exists():
            return []
        known = await self.repo.all_ids()
        removed = []
        for directory in self.root.iterdir():
            if directory.name not in known:
                await remove_dir(directory)
                removed.append(f"snapshot dir {directory.name}")
        return removed


def _errnos(exc: BaseException) -> set[int]:
    """The errno codes behind a failed capture: an OSError's own, those ``cp`` (``CommandFailed``)
    or CRIU (``CheckpointFailed``, its log's error lines) reported (``commands.reported_errnos``)."""
    if isinstance(exc, OSError):
        return {exc.errno} if exc.errno is not None else set()
    if isinstance(exc, CommandFailed):
        return exc.errnos
    return {code for code in reported_errnos(str(exc)) if code is not None}


def capture_error(exc: BaseException) -> APIError:
    """What a failed capture tells the caller: 507 when the snapshot store is full, 400 when the
    sandbox's own files cannot be copied by path (a name longer than PATH_MAX)."""
    reason = str(exc).strip() or type(exc).__name__
    codes = _errnos(exc)
    if errno.ENAMETOOLONG in codes:
        return BadRequestError(
            "snapshot failed: the sandbox's disk holds a path longer than 4096 bytes "
            "(the limit of a snapshot); nothing was kept"
        )
    if errno.ENOSPC in codes:
        error = ServerError("snapshot failed: no space left on the server's snapshot store; nothing was kept")
        error.status_code = 507
        return error
    return ServerError(f"snapshot failed: {reason[-500:]}")


def snapshot_manifest(snapshot: SnapshotRow) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "name": snapshot.name,
        "source_sandbox_id": snapshot.source_sandbox_id,
        "parent_snapshot_id": snapshot.parent_snapshot_id,
        "template_name": snapshot.template_name,
        "runtime": snapshot.runtime,
        "vcpu": snapshot.vcpu,
        "memory": snapshot.memory,
        "disk": snapshot.disk,
        "size_bytes": snapshot.size_bytes,
        "inodes": snapshot.inodes,
        "created_at": snapshot.created_at.isoformat(),
    }
