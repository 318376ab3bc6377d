"""A sandbox on this host: where its files live (layout), its OCI spec, its disk, its /etc files,
its network attachment, and booting and tearing it down. Nothing here knows about states,
records, locks or quotas: the lifecycle (``atoll.server.manager``) decides *when*, this decides
*how*. The warm pool, reconciliation, snapshots and terminals use it directly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from atoll._exceptions import ServerError
from atoll.network.addressing import Slot
from atoll.network.egress import Attachment, EgressService
from atoll.network.policy import EgressPolicy
from atoll.network.pool import NetworkPool
from atoll.runtime import disk, overlay, reaping
from atoll.runtime.base import RuntimeBackend
from atoll.runtime.spec import BindMount, CheckpointFailed, SandboxSpec, etc_dir
from atoll.runtime.trees import remove_host_tree
from atoll.server import readiness
from atoll.server.settings import Settings
from atoll.store.models import SandboxRow, utcnow
from atoll.templates.registry import Template, TemplateRegistry

log = logging.getLogger("atoll.manager")


def new_sandbox_id() -> str:
    # no dash: sandbox hosts are "{id}-{port}.{domain}", so the id must not contain one
    return "sbx" + secrets.token_hex(8)


class SandboxHost:
    def __init__(
        self,
        *,
        settings: Settings,
        backend: RuntimeBackend,
        pool: NetworkPool,
        templates: TemplateRegistry,
        egress: EgressService | None,
        disks: disk.DiskPool | None = None,
        load_backend: Callable[[str], RuntimeBackend] | None = None,
        attach_disk: Callable[[disk.DiskSpec], Awaitable[None]] = disk.attach,
        detach_disk: Callable[[disk.DiskSpec], None] = disk.detach,
    ) -> None:
        self.settings = settings
        self.backend = backend  # the server's default; a template may name another (backend_for)
        self.backends: dict[str, RuntimeBackend] = {backend.name: backend}
        self._load_backend = load_backend
        self.pool = pool
        self.templates = templates
        self.egress = egress  # None: no egress policy (tests of the lifecycle alone)
        self.disks = disks  # disks mounted ahead of demand (None: each made when needed)
        # mounting a sandbox's disk needs root: tests of the lifecycle alone pass their own
        self._disk_attach = attach_disk
        self._disk_detach = detach_disk
        self._zombies = reaping.ZombieSweep()
        # called with a sandbox id before its processes go away (PTY sessions end with it)
        self.teardown_hooks: list[Callable[[str], Awaitable[None]]] = []
        # a sandbox any of these hold (say True for) is paused by freezing, never checkpointed:
        # host-side state such as a PTY's master cannot be saved with it
        self.checkpoint_vetoes: list[Callable[[str], bool]] = []
        # called with a sandbox id just before it is checkpointed (streams into it end first)
        self.before_checkpoint: list[Callable[[str], Awaitable[None]]] = []

    # runtimes and templates -------------------------------------------------------------
    def backend_named(self, name: str) -> RuntimeBackend:
        """The backend called ``name`` ("" means the server's default), loaded on first use."""
        if not name:
            return self.backend
        found = self.backends.get(name)
        if found is None:
            if self._load_backend is None:
                raise ServerError(f"runtime {name!r} is not available on this server")
            try:
                found = self.backends[name] = self._load_backend(name)
            except (KeyError, RuntimeError) as exc:
                raise ServerError(f"runtime {name!r} is not available on this server: {exc}") from None
        return found

    def backend_for(self, row: SandboxRow) -> RuntimeBackend:
        """The backend a sandbox runs on (recorded when it was created)."""
        return self.backend_named(row.runtime)

    def find_template(self, row: SandboxRow) -> Template | None:
        return self.templates.by_id(row.template_id) or self.templates.get(row.template_name)

    def template_for(self, row: SandboxRow) -> Template:
        template = self.find_template(row)
        if template is None:
            raise ServerError(f"template {row.template_name!r} is missing on this host")
        return template

    def sweep_zombies(self) -> list[int]:
        """Zombies that runtimes killed mid-way left to the server, reaped."""
        return self._zombies.sweep()

    # layout -----------------------------------------------------------------------------
    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.settings.sandboxes_dir / sandbox_id

    def checkpoint_dir(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "checkpoint"

    def discard_checkpoint(self, sandbox_id: str) -> None:
        """The image and CRIU's work directory: never kept past their use (they are outside
        the sandbox's disk quota)."""
        image = self.checkpoint_dir(sandbox_id)
        for directory in (image, image.with_name(image.name + ".work")):
            remove_host_tree(directory)

    def slot_of(self, row: SandboxRow) -> Slot | None:
        return self.pool.plan.slot(row.net_slot) if row.net_slot else None

    def spec_for(self, row: SandboxRow, template: Template, slot: Slot | None) -> SandboxSpec:
        base = self.sandbox_dir(row.id)
        etc = etc_dir(base)
        return SandboxSpec(
            sandbox_id=row.id,
            lower_dirs=(
                self.settings.helpers_dir,
                *self.snapshot_layers(row.base_snapshot_id),
                template.rootfs,
            ),
            sandbox_dir=base,
            vcpu=row.vcpu,
            memory_mib=row.memory,
            pids_limit=self.settings.pids_limit,
            netns_path=slot.netns_path if slot else None,
            env={**template.sandbox_env(), **row.env_vars},
            binds=tuple(
                BindMount(source=etc / name, destination=f"/etc/{name}", read_only=False)
                for name in ("hosts", "hostname", "resolv.conf")
            ),
            main_command=tuple(template.cmd) or None,
            workdir=template.workdir,
            uid=template.uid,
            gid=template.gid,
            groups=tuple(template.groups),
        )

    def snapshot_layers(self, snapshot_id: str | None) -> tuple[Path, ...]:
        """The disk layers of a snapshot chain, newest first (a snapshot of a restored sandbox
        holds only its own changes and builds on its parent's)."""
        layers: list[Path] = []
        while snapshot_id:
            layers.append(self.settings.snapshots_dir / snapshot_id / "upper")
            parent = (self.settings.snapshots_dir / snapshot_id / "parent").read_text().strip()
            snapshot_id = parent or None
        return tuple(layers)

    # disk and /etc ----------------------------------------------------------------------
    def disk_of(self, row: SandboxRow) -> disk.DiskSpec:
        """The sandbox's own filesystem for its upper layer and /etc files (``atoll.runtime.disk``)."""
        return disk.DiskSpec(
            sandbox_dir=self.sandbox_dir(row.id),
            size_mib=row.disk if self.settings.disk_quota else None,
            blank_dir=self.settings.blank_disks_dir,
        )

    async def attach_disk(self, row: SandboxRow) -> None:
        """The sandbox's disk: a pooled one moved into place when one is ready, else made now."""
        spec = self.disk_of(row)
        if self.disks is None or not self.disks.take(spec):
            await self._disk_attach(spec)

    def detach_disk(self, row: SandboxRow) -> None:
        self._disk_detach(self.disk_of(row))

    def write_etc(self, row: SandboxRow, slot: Slot) -> None:
        """After ``attach_disk``: the files live on the sandbox's disk, within its quota."""
        etc = etc_dir(self.sandbox_dir(row.id))
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hostname").write_text("sandbox\n")
        (etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{slot.sandbox_ip}\tsandbox\n"
        )
        if self.egress is None:
            servers = self.settings.nameservers()
            (etc / "resolv.conf").write_text("".join(f"nameserver {ns}\n" for ns in servers))
        else:  # Atoll's resolver enforces the policy's names; transforms need the sandbox CA inside
            (etc / "resolv.conf").write_text(self.egress.resolv_conf(slot))
            template = self.find_template(row)
            rootfs = template.rootfs if template else None
            base = row.base_snapshot_id
            restored_from = self.settings.snapshots_dir / base if base else None
            policy = EgressPolicy.compile(row.network_policy)
            self.egress.prepare(policy, self.sandbox_dir(row.id), rootfs, restored_from)

    # network ----------------------------------------------------------------------------
    def network_files(self, row: SandboxRow, slot: Slot) -> tuple[SandboxRow, dict[str, Any]]:
        """Give the row its slot and its /etc files. The row changes in memory; returns it and
        the values the caller records with its next write."""
        row.net_slot = slot.index
        recorded: dict[str, Any] = {"net_slot": slot.index}
        if self.egress is not None and (
            ca_env := self.egress.sandbox_env(EgressPolicy.compile(row.network_policy))
        ):
            if any(k not in row.env_vars for k in ca_env):  # the caller's own values win
                row.env_vars = recorded["env_vars"] = {**ca_env, **row.env_vars}
        self.write_etc(row, slot)
        return row, recorded

    def attachment(self, row: SandboxRow, slot: Slot) -> Attachment:
        return Attachment(
            sandbox_id=row.id,
            org_id=row.org_id,
            policy=EgressPolicy.compile(row.network_policy),
            slot=slot,
            sandbox_dir=self.sandbox_dir(row.id),
        )

    async def attach_network(self, row: SandboxRow, slot: Slot) -> tuple[SandboxRow, dict[str, Any]]:
        """Slot, /etc files and egress policy, before any of the sandbox's processes runs (a
        sandbox has no egress until attached); see ``network_files`` for what it returns."""
        row, recorded = self.network_files(row, slot)
        if self.egress is not None:
            await self.egress.attach(self.attachment(row, slot))
        return row, recorded

    # boot and teardown ------------------------------------------------------------------
    async def boot(self, row: SandboxRow, template: Template, image: Path | None = None) -> dict[str, Any]:
        """Network + root + PID 1 for a sandbox about to be ``running`` (from a checkpoint
        ``image`` when given); on failure nothing is left running and ``row.net_slot`` is None.
        Returns the values to record with the move to ``running`` (its slot among them: a crash
        before that write leaves a slot no record names, which the start-up sweep frees).

        The egress rules go in while the runtime starts PID 1, when that is Atoll's idle init
        (a template without a main process): nothing can use the network before the create
        returns, and until they are in, the sandbox has no egress at all (fail closed)."""
        slot = await self.pool.acquire()
        attaching: asyncio.Future[None] | None = None
        try:
            await self.attach_disk(row)
            row, recorded = self.network_files(row, slot)
            if self.egress is not None:
                attaching = asyncio.ensure_future(self.egress.attach(self.attachment(row, slot)))
                if template.cmd or image is not None:  # its own processes run at once
                    await attaching
            spec = self.spec_for(row, template, slot)
            if image is None:
                await self.boot_ready(row, template, spec, slot)
            else:
                await self.backend_for(row).restore(spec, image)
            if attaching is not None:
                await attaching
        except BaseException:
            if attaching is not None:
                with contextlib.suppress(BaseException):  # done (or failed) before its rules go
                    await asyncio.shield(attaching)
            if self.egress is not None:
                await self.egress.detach(row.id, slot)
            await self.pool.release(slot)
            row.net_slot = None
            raise
        self.pool.refill()  # now that this boot is done (see NetworkPool.acquire)
        now = utcnow()
        return {**recorded, "launch_time": now, "timeout_at": now + dt.timedelta(seconds=row.timeout)}

    async def boot_ready(self, row: SandboxRow, template: Template, spec: SandboxSpec, slot: Slot) -> None:
        """Start PID 1 and, for a template whose main process is a service, wait until it answers."""
        await self.backend_for(row).boot(spec)
        if template.ready_path and template.cmd:
            took_s = await readiness.wait_until_ready(slot.sandbox_ip, template.port, template.ready_path)
            log.debug("sandbox %s: %s ready after %.3fs", row.id, template.name, took_s)

    async def teardown(self, row: SandboxRow, *, keep_disk: bool) -> None:
        """Release everything the sandbox holds on the host (idempotent)."""
        await self.end_sessions(row.id)
        template = self.find_template(row)
        slot = self.slot_of(row)
        if template is not None:
            await self.backend_for(row).halt(self.spec_for(row, template, slot))
        else:  # its template vanished from disk: no spec to halt with, but nothing may stay
            await self.backend_for(row).halt_by_id(row.id)
            overlay.unmount(self.sandbox_dir(row.id) / "rootfs")
        self.detach_disk(row)
        if slot is not None:
            if self.egress is not None:
                await self.egress.detach(row.id, slot)
            await self.pool.release(slot)
        if not keep_disk:  # a disk layer without a quota holds sandbox-made trees of any depth
            try:
                await asyncio.to_thread(remove_host_tree, self.sandbox_dir(row.id))
            except OSError:
                log.exception("removing %s failed", self.sandbox_dir(row.id))

    async def end_sessions(self, sandbox_id: str) -> None:
        """What this process holds open into the sandbox (terminals, streams) ends first."""
        for hook in self.teardown_hooks:
            try:
                await hook(sandbox_id)
            except Exception:
                log.exception("teardown hook failed for %s", sandbox_id)

    # pause and resume -------------------------------------------------------------------
    async def pause(self, row: SandboxRow) -> str:
        """Checkpoint to disk and free the host (processes, memory, cgroups, root mount) when
        the runtime can; else freeze. Returns how: ``checkpoint`` or ``freeze``."""
        kind = "freeze"
        backend = self.backend_for(row)
        if backend.can_checkpoint and not any(veto(row.id) for veto in self.checkpoint_vetoes):
            image = self.checkpoint_dir(row.id)
            await asyncio.to_thread(self.discard_checkpoint, row.id)
            for hook in self.before_checkpoint:
                await hook(row.id)
            try:
                await backend.checkpoint(row.id, image, leave_running=False)
                kind = "checkpoint"
            except CheckpointFailed as exc:
                log.warning("checkpoint of %s failed, pausing by freezing instead: %s", row.id, exc)
                await asyncio.to_thread(self.discard_checkpoint, row.id)
        if kind == "checkpoint":
            await backend.halt(self.spec_for(row, self.template_for(row), self.slot_of(row)))
        else:
            await backend.pause(row.id)
        return kind

    async def unpause(self, row: SandboxRow) -> None:
        """The opposite of ``pause`` (``row.pause_kind`` says which it was)."""
        if row.pause_kind == "checkpoint":
            spec = self.spec_for(row, self.template_for(row), self.slot_of(row))
            await self._disk_attach(self.disk_of(row))  # stays mounted while paused, unless the host rebooted
            await self.backend_for(row).restore(spec, self.checkpoint_dir(row.id))
            await asyncio.to_thread(self.discard_checkpoint, row.id)
        else:
            await self.thaw(row)

    async def thaw(self, row: SandboxRow) -> None:
        """Resume a frozen sandbox; one that is not frozen (a freeze or resume cut short) is fine:
        the backends' ``resume`` asks the runtime whether it still runs."""
        await self.backend_for(row).resume(row.id)
