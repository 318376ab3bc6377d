"""Sandbox lifecycle: the one place that drives the state machine, the store, locks and quotas.
Every state change goes through ``move`` (the table in ``atoll._states``); each sandbox's
transitions are serialised by its own lock. What a transition does on the host (layout, disks,
network, boot, teardown) is the host object's (``atoll.server.host``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from atoll._exceptions import APIError, BadRequestError, ConflictError, NotFoundError, ServerError
from atoll._states import TRANSIENT_STATES, Event, InvalidTransition, State, next_state
from atoll.network.addressing import Slot
from atoll.server import transitions
from atoll.server.capacity import Budget, Capacity
from atoll.server.disk_budget import DiskBudget
from atoll.server.host import SandboxHost
from atoll.server.quota import OrgQuota
from atoll.server.sandbox_params import CreateParams
from atoll.server.settings import Settings
from atoll.server.warm import WarmPool, WarmSandbox
from atoll.store.models import SandboxRow, utcnow
from atoll.store.repo import Repository
from atoll.templates.registry import Template

log = logging.getLogger("atoll.manager")
T = TypeVar("T")
__all__ = ["CreateParams", "SandboxManager"]  # CreateParams: where the routes have always found it


class SandboxManager:
    def __init__(
        self,
        *,
        settings: Settings,
        repo: Repository,
        host: SandboxHost,
        warm: WarmPool | None = None,
        disk_budget: DiskBudget | None = None,
        template_gate: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.host = host
        self.warm = warm  # sandboxes booted ahead of demand (atoll.server.warm)
        self.disk_budget = disk_budget  # room on the data filesystem (disk_budget)
        # raises 503 for a system template still being built in the background
        self.template_gate = template_gate
        self.capacity = Capacity(
            repo,
            Budget.for_host(
                cpu_overcommit=settings.cpu_overcommit, memory_overcommit=settings.memory_overcommit
            ),
        )
        self.quota = OrgQuota(repo, settings.max_sandboxes_per_org)
        self._locks: dict[str, asyncio.Lock] = {}

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

    def busy(self, sandbox_id: str) -> bool:
        """Whether a transition of the sandbox is under way in this process."""
        return self._lock(sandbox_id).locked()

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is no longer this host's (deleted, or moved to another node)."""
        self._locks.pop(sandbox_id, None)

    def require_here(self, row: SandboxRow) -> SandboxRow:
        """A node acts only on the sandboxes its host holds: a request that reached it for one
        that moved to another node meanwhile (forwarded just before the move ended) gets 409,
        never a resume or a delete of another node's sandbox. An API replica, which runs none,
        answers for sandboxes of nodes that are down as before."""
        own = self.repo.node_id
        if own is None or self.settings.role == "api" or row.node_id in (None, own):
            return row
        raise ConflictError(f"sandbox {row.id} moved to node {row.node_id}; retry the request")

    async def move(
        self, row: SandboxRow, event: Event, *, reason: str | None = None, **values: Any
    ) -> SandboxRow:
        """The one state write: the table decides the new state. ``reason`` says why, when no
        request asked for the new state (a move without one clears the last one)."""
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

    # what the router asks (its ``SandboxLifecycle`` protocol)
    def slot_of(self, row: SandboxRow) -> Slot | None:
        return self.host.slot_of(row)

    def template_for(self, row: SandboxRow) -> Template:
        return self.host.template_for(row)

    # lifecycle --------------------------------------------------------------------------
    async def create(self, org_id: str, params: CreateParams) -> SandboxRow:
        template = await self.host.templates.resolve(org_id, params.template_name)
        if template is None and self.template_gate is not None:
            self.template_gate(params.template_name)
        if template is None:
            raise BadRequestError(
                "invalid sandbox parameters",
                errors=[{"field": "template_name", "error": f"template {params.template_name!r} not found"}],
            )
        runtime = self.host.backend_named(template.runtime).name
        row = params.new_row(org_id, template, runtime=runtime, disk_mib=self.settings.disk_mib)
        async with self.quota.claim(org_id, row.id) as claim:  # until its record counts
            if self.warm is not None and self.disk_budget is not None:  # a warm disk exists; may it grow?
                await self.disk_budget.check_start()
            if self.warm is not None and (
                warm := self.warm.take(template, params.network_policy, params.env_vars)
            ):
                claim.sandbox_id = warm.sandbox_id
                return await self._claim(self.warm, row, warm)
            return await self.boot_new(row, template)

    async def _claim(self, pool: WarmPool, row: SandboxRow, warm: WarmSandbox) -> SandboxRow:
        """Turn a warm sandbox into this request's sandbox (see ``atoll.server.warm``): its
        limits, /etc files and egress policy first (nothing runs in it yet, and no record
        names it), then one write records it as running. Whatever fails, the warm sandbox is
        removed (its egress rules and state too) and nothing of the request stays."""
        row.id = warm.sandbox_id
        try:
            await self.host.backend_for(row).set_limits(row.id, vcpu=row.vcpu, memory_mib=row.memory)
            row, _ = await self.host.attach_network(row, warm.slot)  # recorded by the insert below
        except Exception as exc:
            log.exception("claiming warm sandbox %s failed", row.id)
            await pool.discard(warm)
            raise ServerError(f"sandbox failed to start: {exc}") from exc
        now = utcnow()
        row.state = State.RUNNING  # its first record: no earlier state to move from
        row.launch_time = row.state_change_time = now
        row.timeout_at = now + dt.timedelta(seconds=row.timeout)
        try:
            async with self.capacity.admit(row.vcpu, row.memory):
                await self.repo.add_sandbox(row)
        except BaseException:
            await pool.discard(warm)
            raise
        return row

    async def boot_new(self, row: SandboxRow, template: Template, image: Path | None = None) -> SandboxRow:
        """Boot a brand-new sandbox, then record it, running, in one write (its room on the host
        is reserved meanwhile, and nobody knows its id yet). One that fails to start is removed
        at once, and leaves nothing, not even a record. A crash mid-boot leaves host resources
        no record names: the start-up reconciliation removes them."""
        room = self.disk_budget.reserve(row.disk) if self.disk_budget else contextlib.nullcontext()
        async with room, self.capacity.reserve(row.id, row.org_id, row.vcpu, row.memory), self._lock(row.id):
            try:
                booted = await self.bounded("starting", self.host.boot(row, template, image))
                for name, value in booted.items():
                    setattr(row, name, value)
                row.state = next_state(State.STARTING, Event.BOOTED)  # its first record
                row.state_change_time = utcnow()
                await self.repo.add_sandbox(row)
            except Exception as exc:
                log.exception("sandbox %s failed to start", row.id)
                try:
                    await self.bounded("cleaning up", self.host.teardown(row, keep_disk=False))
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
            row = await self.move(self.require_here(await self.get(org_id, sandbox_id)), Event.DELETE)
            await self.finish_delete(row)

    async def finish_delete(self, row: SandboxRow) -> None:
        """Deleted even when its teardown fails or times out: what stays on the host is logged,
        and the start-up sweep removes it (no record names it)."""
        try:
            await self.bounded("deleting", self.host.teardown(row, keep_disk=False))
        finally:
            await self.move(row, Event.DELETED, net_slot=None, timeout_at=None)
            self.forget(row.id)

    async def pause(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            return await self._pause(self.require_here(await self.get(org_id, sandbox_id)))

    async def _pause(self, row: SandboxRow) -> SandboxRow:
        """``SandboxHost.pause``; the network slot is kept, so the address survives. Bounded like
        every transition: one that times out or fails half-way (frozen, or checkpointed and its
        processes gone) is undone (resumed, its image removed), and a sandbox that cannot be
        resumed then is quarantined."""
        if State(row.state) != State.RUNNING:
            raise ConflictError(f"cannot pause a sandbox that is {row.state}")
        try:
            kind = await self.bounded("pausing", self.host.pause(row))
        except Exception as exc:
            timed_out = transitions.timed_out(exc)
            await transitions.undo_pause(self, row, str(exc) if timed_out else f"pausing failed: {exc}")
            if isinstance(exc, APIError):
                raise
            raise transitions.failure("sandbox failed to pause", exc) from exc
        timeout_at = None if row.auto_pause else row.timeout_at
        return await self.move(row, Event.PAUSE, pause_kind=kind, timeout_at=timeout_at)

    async def ensure_running(self, row: SandboxRow) -> SandboxRow:
        """A paused sandbox resumes on any request that reaches it."""
        if State(row.state) == State.RUNNING:
            return row
        async with self._lock(row.id):  # a move off a draining node holds it: resumed after
            row = self.require_here(await self.get(row.org_id, row.id))
            if State(row.state) == State.PAUSED:
                if row.pause_kind == "checkpoint":  # its memory comes back onto the host
                    async with self.capacity.admit(row.vcpu, row.memory):
                        row = await self.move(row, Event.RESUME)
                else:
                    row = await self.move(row, Event.RESUME)
                try:
                    await self.bounded("resuming", self.host.unpause(row))
                except Exception as exc:  # back to paused: a later request tries again
                    await self.move(row, Event.FAILED, reason=f"resuming failed: {exc}")
                    raise transitions.failure("sandbox failed to resume", exc) from exc
                timeout_at = utcnow() + dt.timedelta(seconds=row.timeout)
                row = await self.move(row, Event.RESUMED, pause_kind=None, timeout_at=timeout_at)
        if State(row.state) != State.RUNNING:
            raise ConflictError(f"sandbox is {row.state}")
        return row

    async def stop(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            row = await self.move(self.require_here(await self.get(org_id, sandbox_id)), Event.STOP)
            try:
                await self.bounded("stopping", self.host.teardown(row, keep_disk=True))
                # a stopped sandbox's memory is gone by definition
                await asyncio.to_thread(self.host.discard_checkpoint, row.id)
            except Exception as exc:  # stopped once cleaned up, else failed
                await transitions.fall_back(self, row, f"stopping failed: {exc}")
                raise transitions.failure("sandbox failed to stop", exc) from exc
            return await self.move(row, Event.STOPPED, net_slot=None, timeout_at=None, pause_kind=None)

    async def start(self, org_id: str, sandbox_id: str) -> SandboxRow:
        async with self.transition(sandbox_id):
            row = self.require_here(await self.get(org_id, sandbox_id))
            if State(row.state) == State.FAILED:  # its clean-up may not have finished: again first
                try:
                    await self.bounded("cleaning up", self.host.teardown(row, keep_disk=True))
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
                await asyncio.to_thread(self.host.discard_checkpoint, row.id)
                booted = await self.bounded("starting", self.host.boot(row, self.host.template_for(row)))
            except Exception as exc:  # stopped once cleaned up (disk kept), else failed
                await transitions.fall_back(self, row, f"starting failed: {exc}")
                raise transitions.failure("sandbox failed to start", exc) from exc
            return await self.move(row, Event.BOOTED, **booted)

    # timeouts ---------------------------------------------------------------------------
    async def expire_due(self) -> None:
        """Sandboxes past their timeout are deleted, or paused when created with auto_pause;
        zombies that runtimes killed mid-way left to the server are reaped."""
        if reaped := self.host.sweep_zombies():
            log.info("reaped %d orphaned zombie processes: %s", len(reaped), reaped)
        for row in await self.repo.expired():
            if self.busy(row.id):
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
