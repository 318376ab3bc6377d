"""Sandbox lifecycle: the one place that drives the state machine, the runtime backend, the
network pool and the store together. Every state change goes through ``move`` (the table in
``atoll._states``); each sandbox's transitions are serialised by its own lock."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from atoll._exceptions import (
    APIError,
    BadRequestError,
    CapacityError,
    ConflictError,
    NotFoundError,
    ServerError,
)
from atoll._states import TRANSIENT_STATES, Event, InvalidTransition, State, next_state
from atoll.network.addressing import Slot
from atoll.network.egress import Attachment, EgressService
from atoll.network.policy import EgressPolicy
from atoll.network.pool import NetworkPool
from atoll.runtime import disk, overlay, reaping
from atoll.runtime.base import RuntimeBackend
from atoll.runtime.spec import (
    BindMount,
    CheckpointFailed,
    ExecRequest,
    ExecResult,
    ExecSetupFailed,
    SandboxSpec,
    etc_dir,
)
from atoll.runtime.trees import remove_host_tree
from atoll.server import readiness, transitions
from atoll.server.capacity import Budget, Capacity
from atoll.server.disk_budget import DiskBudget
from atoll.server.quota import OrgQuota
from atoll.server.settings import Settings
from atoll.server.warm import WarmPool, WarmSandbox
from atoll.store.models import SandboxRow, utcnow
from atoll.store.repo import Repository
from atoll.templates.registry import Template, TemplateRegistry

log = logging.getLogger("atoll.manager")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class CreateParams:
    template_name: str
    vcpu: int
    memory: int
    timeout: int
    auto_pause: bool = False
    env_vars: dict[str, str] = field(default_factory=dict)
    network_policy: dict[str, Any] | None = None


def new_sandbox_id() -> str:
    # no dash: sandbox hosts are "{id}-{port}.{domain}", so the id must not contain one
    return "sbx" + secrets.token_hex(8)


class SandboxManager:
    egress: EgressService | None = None  # set by the app: egress policy hooks (atoll.network.egress)
    disk_budget: DiskBudget | None = None  # set by the app: room on the data filesystem (disk_budget)

    def __init__(
        self,
        *,
        settings: Settings,
        repo: Repository,
        backend: RuntimeBackend,
        pool: NetworkPool,
        templates: TemplateRegistry,
        load_backend: Callable[[str], RuntimeBackend] | None = None,
        attach_disk: Callable[[disk.DiskSpec], Awaitable[None]] = disk.attach,
        detach_disk: Callable[[disk.DiskSpec], None] = disk.detach,
    ) -> None:
        self.settings = settings
        # mounting a sandbox's disk needs root: tests of the lifecycle alone pass their own
        self._disk_attach = attach_disk
        self._disk_detach = detach_disk
        self.repo = repo
        self.backend = backend  # the server's default; a template may name another (backend_for)
        self.backends: dict[str, RuntimeBackend] = {backend.name: backend}
        self._load_backend = load_backend
        self.pool = pool
        self.templates = templates
        self.capacity = Capacity(
            repo,
            Budget.for_host(
                cpu_overcommit=settings.cpu_overcommit, memory_overcommit=settings.memory_overcommit
            ),
        )
        self.quota = OrgQuota(repo, settings.max_sandboxes_per_org)
        self._locks: dict[str, asyncio.Lock] = {}
        self._zombies = reaping.ZombieSweep()  # run by expire_due, once per reap cycle
        self.warm: WarmPool | None = None  # set by the app when warm pools are enabled
        self.disks: disk.DiskPool | None = None  # set by the app: disks mounted ahead of demand
        # called with a sandbox id before its processes go away (PTY sessions end with it)
        self.teardown_hooks: list[Callable[[str], Awaitable[None]]] = []
        # a sandbox any of these hold (say True for) is paused by freezing, never checkpointed:
        # host-side state such as a PTY's master cannot be saved with it
        self.checkpoint_vetoes: list[Callable[[str], bool]] = []
        # called with a sandbox id just before it is checkpointed (streams into it end first)
        self.before_checkpoint: list[Callable[[str], Awaitable[None]]] = []
        # set by the app: raises 503 for a system template still being built in the background
        self.template_gate: Callable[[str], None] | None = None

    # helpers ----------------------------------------------------------------------------
    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def transition(self, sandbox_id: str) -> AsyncIterator[None]:
        """Hold the sandbox's lock; a request arriving mid-transition gets 409, not a wait."""
        lock = self._lock(sandbox_id)
        if lock.locked():
            raise ConflictError("sandbox is in the middle of a transition; retry shortly")
        async with lock:
            yield

    async def move(
        self, row: SandboxRow, event: Event, *, reason: str | None = None, **values: Any
    ) -> SandboxRow:
        """``reason`` says why, when no request asked for the new state (a move without one
        clears the last one)."""
        try:
            state = next_state(State(row.state), event)
        except InvalidTransition as exc:
            raise ConflictError(str(exc)) from None
        return await self.repo.update_sandbox(
            row.id, state=state, state_reason=reason[:500] if reason else None, **values
        )

    async def bounded(self, what: str, work: Awaitable[T], *, timeout_s: float | None = None) -> T:
        """A transition's work under ``transition_timeout_s`` (``atoll.server.transitions``)."""
        limit_s = self.settings.transition_timeout_s if timeout_s is None else timeout_s
        return await transitions.bounded(what, work, timeout_s=limit_s)

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

    def template_for(self, row: SandboxRow) -> Template:
        template = self.templates.by_id(row.template_id) or self.templates.get(row.template_name)
        if template is None:
            raise ServerError(f"template {row.template_name!r} is missing on this host")
        return template

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.settings.sandboxes_dir / sandbox_id

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

    def disk_of(self, row: SandboxRow) -> disk.DiskSpec:
        """The sandbox's own filesystem for its upper layer and /etc files (``atoll.runtime.disk``)."""
        return disk.DiskSpec(
            sandbox_dir=self.sandbox_dir(row.id),
            size_mib=row.disk if self.settings.disk_quota else None,
            blank_dir=self.settings.blank_disks_dir,
        )

    def write_etc(self, row: SandboxRow, slot: Slot) -> None:
        """After ``disk.attach``: the files live on the sandbox's disk, within its quota."""
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
            template = self.templates.by_id(row.template_id) or self.templates.get(row.template_name)
            rootfs = template.rootfs if template else None
            self.egress.prepare(EgressPolicy.from_wire(row.network_policy), self.sandbox_dir(row.id), rootfs)

    def slot_of(self, row: SandboxRow) -> Slot | None:
        return self.pool.plan.slot(row.net_slot) if row.net_slot else None

    async def attach_disk(self, row: SandboxRow) -> None:
        """The sandbox's disk: a pooled one moved into place when one is ready, else made now."""
        spec = self.disk_of(row)
        if self.disks is None or not self.disks.take(spec):
            await self._disk_attach(spec)

    async def _boot(self, row: SandboxRow, template: Template, image: Path | None = None) -> dict[str, Any]:
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
            row, recorded = self._network_files(row, slot)
            if self.egress is not None:
                attaching = asyncio.ensure_future(self.egress.attach(self._attachment(row, slot)))
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
        now = utcnow()
        return {**recorded, "launch_time": now, "timeout_at": now + dt.timedelta(seconds=row.timeout)}

    async def boot_ready(self, row: SandboxRow, template: Template, spec: SandboxSpec, slot: Slot) -> None:
        """Start PID 1 and, for a template whose main process is a service, wait until it answers."""
        await self.backend_for(row).boot(spec)
        if template.ready_path and template.cmd:
            took_s = await readiness.wait_until_ready(slot.sandbox_ip, template.port, template.ready_path)
            log.debug("sandbox %s: %s ready after %.3fs", row.id, template.name, took_s)

    def _network_files(self, row: SandboxRow, slot: Slot) -> tuple[SandboxRow, dict[str, Any]]:
        """Give the row its slot and its /etc files. The row changes in memory; returns it and
        the values the caller records with its next write."""
        row.net_slot = slot.index
        recorded: dict[str, Any] = {"net_slot": slot.index}
        if self.egress is not None and (
            ca_env := self.egress.sandbox_env(EgressPolicy.from_wire(row.network_policy))
        ):
            if any(k not in row.env_vars for k in ca_env):  # the caller's own values win
                row.env_vars = recorded["env_vars"] = {**ca_env, **row.env_vars}
        self.write_etc(row, slot)
        return row, recorded

    def _attachment(self, row: SandboxRow, slot: Slot) -> Attachment:
        return Attachment(
            sandbox_id=row.id,
            org_id=row.org_id,
            policy=EgressPolicy.from_wire(row.network_policy),
            slot=slot,
            sandbox_dir=self.sandbox_dir(row.id),
        )

    async def _attach_network(self, row: SandboxRow, slot: Slot) -> tuple[SandboxRow, dict[str, Any]]:
        """Slot, /etc files and egress policy, before any of the sandbox's processes runs (a
        sandbox has no egress until attached); see ``_network_files`` for what it returns."""
        row, recorded = self._network_files(row, slot)
        if self.egress is not None:
            await self.egress.attach(self._attachment(row, slot))
        return row, recorded

    async def _teardown(self, row: SandboxRow, *, keep_disk: bool) -> None:
        """Release everything the sandbox holds on the host (idempotent)."""
        for hook in self.teardown_hooks:
            try:
                await hook(row.id)
            except Exception:
                log.exception("teardown hook failed for %s", row.id)
        template = self.templates.by_id(row.template_id) or self.templates.get(row.template_name)
        slot = self.slot_of(row)
        if template is not None:
            await self.backend_for(row).halt(self.spec_for(row, template, slot))
        else:  # its template vanished from disk: no spec to halt with, but nothing may stay
            await self.backend_for(row).halt_by_id(row.id)
            overlay.unmount(self.sandbox_dir(row.id) / "rootfs")
        self._disk_detach(self.disk_of(row))
        if slot is not None:
            if self.egress is not None:
                await self.egress.detach(row.id, slot)
            await self.pool.release(slot)
        if not keep_disk:  # a disk layer without a quota holds sandbox-made trees of any depth
            try:
                await asyncio.to_thread(remove_host_tree, self.sandbox_dir(row.id))
            except OSError:
                log.exception("removing %s failed", self.sandbox_dir(row.id))

    # lifecycle --------------------------------------------------------------------------
    async def create(self, org_id: str, params: CreateParams) -> SandboxRow:
        template = await self.templates.resolve(org_id, params.template_name)
        if template is None and self.template_gate is not None:
            self.template_gate(params.template_name)
        if template is None:
            raise BadRequestError(
                "invalid sandbox parameters",
                errors=[{"field": "template_name", "error": f"template {params.template_name!r} not found"}],
            )
        row = SandboxRow(
            id=new_sandbox_id(),
            org_id=org_id,
            template_id=template.id,
            template_name=template.name,
            runtime=self.backend_named(template.runtime).name,
            vcpu=params.vcpu,
            memory=params.memory,
            disk=self.settings.disk_mib,
            timeout=params.timeout,
            auto_pause=params.auto_pause,
            state=State.STARTING,
            env_vars=dict(params.env_vars),
            network_policy=params.network_policy,
        )
        async with self.quota.claim(org_id, row.id) as claim:  # until its record counts
            if self.warm is not None and self.disk_budget is not None:  # a warm disk exists; may it grow?
                await self.disk_budget.check_start()
            if self.warm is not None and (
                warm := self.warm.take(template, params.network_policy, params.env_vars)
            ):
                claim.sandbox_id = warm.sandbox_id
                return await self._claim(row, warm)
            return await self.boot_new(row, template)

    async def _claim(self, row: SandboxRow, warm: WarmSandbox) -> SandboxRow:
        """Turn a warm sandbox into this request's sandbox (see ``atoll.server.warm``): its
        limits, /etc files and egress policy first (nothing runs in it yet, and no record
        names it), then one write records it as running. Whatever fails, the warm sandbox is
        removed and nothing of the request stays."""
        row.id = warm.sandbox_id
        assert self.warm is not None
        try:
            await self.backend_for(row).set_limits(row.id, vcpu=row.vcpu, memory_mib=row.memory)
            row, _ = await self._attach_network(row, warm.slot)  # recorded by the insert below
        except Exception as exc:
            log.exception("claiming warm sandbox %s failed", row.id)
            await self._discard_claimed(warm)
            raise ServerError(f"sandbox failed to start: {exc}") from exc
        now = utcnow()
        row.state = State.RUNNING
        row.launch_time = row.state_change_time = now
        row.timeout_at = now + dt.timedelta(seconds=row.timeout)
        try:
            async with self.capacity.admit(row.vcpu, row.memory):
                await self.repo.add_sandbox(row)
        except BaseException:
            await self._discard_claimed(warm)
            raise
        return row

    async def _discard_claimed(self, warm: WarmSandbox) -> None:
        assert self.warm is not None
        await self.warm.discard(warm)  # its egress rules and state go too

    async def boot_new(self, row: SandboxRow, template: Template, image: Path | None = None) -> SandboxRow:
        """Boot a brand-new sandbox, then record it, running, in one write (its room on the host
        is reserved meanwhile, and nobody knows its id yet). One that fails to start is removed
        at once, and leaves nothing, not even a record. A crash mid-boot leaves host resources
        no record names: the start-up reconciliation removes them."""
        room = self.disk_budget.reserve(row.disk) if self.disk_budget else contextlib.nullcontext()
        async with room, self.capacity.reserve(row.id, row.org_id, row.vcpu, row.memory), self._lock(row.id):
            try:
                booted = await self.bounded("starting", self._boot(row, template, image))
                for name, value in booted.items():
                    setattr(row, name, value)
                row.state = State.RUNNING
                row.state_change_time = utcnow()
                await self.repo.add_sandbox(row)
            except Exception as exc:
                log.exception("sandbox %s failed to start", row.id)
                try:
                    await self.bounded("cleaning up", self._teardown(row, keep_disk=False))
                except Exception:  # no record names it: the start-up sweep removes what stays
                    log.exception("sandbox %s: cleaning up after a failed start failed", row.id)
                raise transitions.failure("sandbox failed to start", exc) from exc
        return row

    async def get(self, org_id: str, sandbox_id: str) -> SandboxRow:
        row = await self.repo.get_sandbox(sandbox_id, org_id)
        if row is None:
            raise NotFoundError("sandbox not found")
        return row

    async def delete(self, org_id: str, sandbox_id: str) -> None:
        row = await self.get(org_id, sandbox_id)
        if State(row.state) in TRANSIENT_STATES:
            raise ConflictError(f"sandbox is {row.state}; retry when the transition ends")
        async with self.transition(row.id):
            row = await self.move(await self.get(org_id, sandbox_id), Event.DELETE)
            await self.finish_delete(row)

    async def finish_delete(self, row: SandboxRow) -> None:
        """Deleted even when its teardown fails or times out: what stays on the host is logged,
        and the start-up sweep removes it (no record names it)."""
        try:
            await self.bounded("deleting", self._teardown(row, keep_disk=False))
        finally:
            await self.move(row, Event.DELETED, net_slot=None, timeout_at=None)
            self._locks.pop(row.id, None)

    async def pause(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            return await self._pause(await self.get(org_id, sandbox_id))

    async def _pause(self, row: SandboxRow) -> SandboxRow:
        """Checkpoint to disk and free the host (processes, memory, cgroups, root mount) when
        the runtime can; else freeze. The network slot is kept, so the address survives. Bounded
        like every transition: one that times out or fails half-way (frozen, or checkpointed and
        its processes gone) is undone (resumed, its image removed), and a sandbox that cannot be
        resumed then is quarantined."""
        if State(row.state) != State.RUNNING:
            raise ConflictError(f"cannot pause a sandbox that is {row.state}")
        try:
            return await self.bounded("pausing", self._pause_work(row))
        except Exception as exc:
            timed_out = transitions.timed_out(exc)
            await transitions.undo_pause(self, row, str(exc) if timed_out else f"pausing failed: {exc}")
            if isinstance(exc, APIError):
                raise
            raise transitions.failure("sandbox failed to pause", exc) from exc

    async def _pause_work(self, row: SandboxRow) -> SandboxRow:
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
        timeout_at = None if row.auto_pause else row.timeout_at
        return await self.move(row, Event.PAUSE, pause_kind=kind, timeout_at=timeout_at)

    def checkpoint_dir(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "checkpoint"

    def discard_checkpoint(self, sandbox_id: str) -> None:
        """The image and CRIU's work directory: never kept past their use (they are outside
        the sandbox's disk quota)."""
        image = self.checkpoint_dir(sandbox_id)
        for directory in (image, image.with_name(image.name + ".work")):
            remove_host_tree(directory)

    async def _unpause(self, row: SandboxRow) -> None:
        if row.pause_kind == "checkpoint":
            spec = self.spec_for(row, self.template_for(row), self.slot_of(row))
            await self._disk_attach(self.disk_of(row))  # stays mounted while paused, unless the host rebooted
            await self.backend_for(row).restore(spec, self.checkpoint_dir(row.id))
            await asyncio.to_thread(self.discard_checkpoint, row.id)
        else:
            await transitions.thaw(self, row)

    async def ensure_running(self, row: SandboxRow) -> SandboxRow:
        """A paused sandbox resumes on any request that reaches it."""
        if State(row.state) == State.RUNNING:
            return row
        async with self._lock(row.id):
            row = await self.get(row.org_id, row.id)
            if State(row.state) == State.PAUSED:
                if row.pause_kind == "checkpoint":  # its memory comes back onto the host
                    async with self.capacity.admit(row.vcpu, row.memory):
                        row = await self.move(row, Event.RESUME)
                else:
                    row = await self.move(row, Event.RESUME)
                try:
                    await self.bounded("resuming", self._unpause(row))
                except Exception as exc:  # back to paused: a later request tries again
                    await self.move(row, Event.FAILED, reason=f"resuming failed: {exc}")
                    raise transitions.failure("sandbox failed to resume", exc) from exc
                row = await self.move(
                    row,
                    Event.RESUMED,
                    pause_kind=None,
                    timeout_at=utcnow() + dt.timedelta(seconds=row.timeout),
                )
        if State(row.state) != State.RUNNING:
            raise ConflictError(f"sandbox is {row.state}")
        return row

    async def stop(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            row = await self.move(await self.get(org_id, sandbox_id), Event.STOP)
            try:
                await self.bounded("stopping", self._teardown(row, keep_disk=True))
                # a stopped sandbox's memory is gone by definition
                await asyncio.to_thread(self.discard_checkpoint, row.id)
            except Exception as exc:  # stopped once cleaned up, else failed
                await transitions.fall_back(self, row, f"stopping failed: {exc}")
                raise transitions.failure("sandbox failed to stop", exc) from exc
            return await self.move(row, Event.STOPPED, net_slot=None, timeout_at=None, pause_kind=None)

    async def start(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            row = await self.get(org_id, sandbox_id)
            if State(row.state) == State.FAILED:  # its clean-up may not have finished: again first
                try:
                    await self.bounded("cleaning up", self._teardown(row, keep_disk=True))
                except Exception as exc:
                    raise transitions.failure("the failed sandbox could not be cleaned up", exc) from exc
                row = await self.repo.update_sandbox(row.id, net_slot=None)
            if self.disk_budget is not None:  # its disk exists; whether it may grow again
                await self.disk_budget.check_start()
            # counted from here: the claim holds its room until its record (``starting``) does
            async with self.quota.claim(org_id, row.id, retry_after_s=5):
                async with self.capacity.admit(row.vcpu, row.memory):
                    row = await self.move(row, Event.START)
            try:
                # memory of an earlier life: never restored now
                await asyncio.to_thread(self.discard_checkpoint, row.id)
                booted = await self.bounded("starting", self._boot(row, self.template_for(row)))
            except Exception as exc:  # stopped once cleaned up (disk kept), else failed
                await transitions.fall_back(self, row, f"starting failed: {exc}")
                raise transitions.failure("sandbox failed to start", exc) from exc
            return await self.move(row, Event.BOOTED, **booted)

    async def execute(
        self,
        org_id: str,
        sandbox_id: str,
        *,
        command: str,
        cwd: str | None,
        envs: dict[str, str],
        timeout: float,
    ) -> ExecResult:
        row = await self.ensure_running(await self.get(org_id, sandbox_id))
        template = self.template_for(row)
        request = ExecRequest(
            argv=("/bin/sh", "-c", command),
            env={**template.sandbox_env(), **row.env_vars, **envs},
            cwd=cwd or template.workdir,
            timeout=timeout,
            max_output_bytes=self.settings.exec_max_output_bytes,
        )
        try:
            return await self.backend_for(row).exec(row.id, request)
        except ExecSetupFailed as exc:
            if "chdir" in str(exc):
                raise BadRequestError(
                    "invalid process parameters",
                    errors=[{"field": "cwd", "error": "directory does not exist"}],
                ) from None
            if any(word in str(exc).lower() for word in ("try again", "temporarily unavailable")):
                # EAGAIN: the sandbox's own process limit is used up (e.g. by a fork bomb that is
                # still being reaped); transient, and the sandbox's doing, not the server's
                raise CapacityError(
                    "the sandbox has no room for a new process (its process limit is reached); retry",
                    retry_after=1,
                ) from None
            if "not running" in str(exc):
                # its runtime ended under it (e.g. the host's OOM killer ended a gVisor sentry
                # that went past its memory limit): the sandbox's state, not a server failure
                raise ConflictError(
                    "the sandbox's runtime is no longer running (it may have run out of memory); "
                    "delete the sandbox"
                ) from None
            raise ServerError(f"could not start the process: {exc}") from None

    # timeouts ---------------------------------------------------------------------------
    async def expire_due(self) -> None:
        """Sandboxes past their timeout are deleted, or paused when created with auto_pause;
        zombies that runtimes killed mid-way left to the server are reaped."""
        if reaped := self._zombies.sweep():
            log.info("reaped %d orphaned zombie processes: %s", len(reaped), reaped)
        for row in await self.repo.expired():
            if self._lock(row.id).locked():
                continue
            try:
                if row.auto_pause and State(row.state) == State.RUNNING:
                    async with self.transition(row.id):
                        await self._pause(row)
                elif row.auto_pause:
                    await self.repo.update_sandbox(row.id, timeout_at=None)
                else:
                    await self.delete(row.org_id, row.id)
            except Exception:
                log.exception("timeout handling failed for %s", row.id)
