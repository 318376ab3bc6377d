"""Warm pools: sandboxes booted ahead of demand, claimed by creates.

A warm sandbox is booted to the last step that does not depend on the request: network slot,
root filesystem, cgroups and an idle PID 1 (the reaping init, which runs nothing). It has no
record in the store, and of egress only the default policy's rules in the kernel (nothing runs in
it to use them; a claim with that policy then writes no rules). A claim applies everything the
request decides before its first command can run: the CPU and memory limits (lowered from the
maximum it was booted with), the /etc files, the egress policy, and then the record (a new id,
never used before), in one write. The sandbox's own upper layer is untouched until then, so a
claimed sandbox is indistinguishable from a freshly booted one. What a claim cannot change, a
warm sandbox is never used for: a template with its own main process (it would already have
run) unless it is one of Atoll's own services (the code interpreter, whose kernel being up is
the point of the pool) and the create sets no environment, a policy with transforms (its CA goes
into the root before boot), or a snapshot restore.

Desktops (``system/desktop``, in the default ``warm_templates``) have a pool of their own size
(``warm_desktop_pool_size``): a booted desktop holds a few hundred MiB and its boot costs seconds
of CPU (14 s under gVisor), so it is kept ready only as many times as asked, and only while warm
pools are on at all (``warm_pool_size`` > 0). A claimed desktop is up: the warm boot waited for
its readiness path (all four of its processes running), so a create from the pool returns a
desktop that answers at once.

Refill runs in the background after every claim, one sandbox at a time for each template (a
lane of its own per template: one loop over all of them made a claimed default sandbox wait
until the code interpreter's and the desktop's pools were full, seconds of boots, so a client
creating again a few hundred milliseconds later got a cold boot), and only in a lull between
API requests (``quiet``): booting a sandbox costs as much CPU as a create, and on a small host
it would slow the very requests the pool is there to speed up. A create never waits for it,
and with the pool empty it simply boots as usual. After a crash the warm sandboxes have no
records, so the start-up reconciliation removes them like any other leftover."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from atoll._policy import NetworkPolicy
from atoll._states import State
from atoll._tasks import cancel_and_wait
from atoll.network.addressing import Slot
from atoll.runtime.trees import remove_host_tree
from atoll.server.host import SandboxHost, new_sandbox_id
from atoll.store.models import SandboxRow
from atoll.templates.desktop import NAME as DESKTOP_TEMPLATE
from atoll.templates.registry import SYSTEM_PREFIX, Template

log = logging.getLogger("atoll.warm")
WARM_VCPU = 8
WARM_MEMORY_MIB = 8192


@dataclass(frozen=True)
class WarmSandbox:
    sandbox_id: str
    template: Template
    slot: Slot


def claimable(
    template: Template, network_policy: NetworkPolicy | None, env_vars: dict[str, str] | None = None
) -> bool:
    """Whether a warm sandbox of ``template`` can serve a create with these parameters."""
    if network_policy is not None and network_policy.transforms:
        return False
    if not template.cmd:
        return True
    # A main process has already run in a warm sandbox: only Atoll's own services (system
    # templates, which reach no network before a claim) qualify, and only for a create whose
    # environment the main process would not have needed (commands still get it at exec).
    return template.name.startswith(SYSTEM_PREFIX) and bool(template.ready_path) and not env_vars


class WarmPool:
    def __init__(
        self,
        host: SandboxHost,
        *,
        size: int,
        template_names: tuple[str, ...],
        quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.size = size
        desktops = host.settings.warm_desktop_pool_size if size > 0 else 0
        self.template_names = template_names
        # how many of each to keep ready
        self.sizes = {name: desktops if name == DESKTOP_TEMPLATE else size for name in template_names}
        self.quiet = quiet  # awaited before each refill boot
        self._ready: dict[str, deque[WarmSandbox]] = {name: deque() for name in template_names}
        self._wake = {name: asyncio.Event() for name in template_names}  # one lane per template
        self._fillers: list[asyncio.Task[None]] = []
        self._discarding: set[asyncio.Task[None]] = set()

    @property
    def ready_count(self) -> int:
        return sum(self.ready_by_template().values())

    def ready_by_template(self) -> dict[str, int]:
        """Warm sandboxes ready, by template (what a cluster node reports to placement)."""
        return {name: len(self._ready[name]) for name in self.template_names}

    def levels(self) -> dict[str, dict[str, int]]:
        """Each template's pool: how many are ready, of how many it keeps (``/v1/health``)."""
        return {name: {"ready": n, "size": self.sizes[name]} for name, n in self.ready_by_template().items()}

    def wake(self) -> None:
        """A template may have appeared (a background build finished): fill its pool."""
        for event in self._wake.values():
            event.set()

    def start(self) -> None:
        for name in self.template_names:
            if self.sizes[name] > 0:
                self._fillers.append(asyncio.create_task(self._fill_forever(name)))
                self._wake[name].set()

    def take(
        self,
        template: Template,
        network_policy: NetworkPolicy | None,
        env_vars: dict[str, str] | None = None,
    ) -> WarmSandbox | None:
        queue = self._ready.get(template.name)
        if not queue or not claimable(template, network_policy, env_vars):
            return None
        self._wake[template.name].set()
        warm = queue.popleft()
        if warm.template.id != template.id:  # the template was rebuilt since: this one is stale
            task = asyncio.create_task(self.discard(warm))
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)
            return None
        return warm

    def _transient_row(self, sandbox_id: str, template: Template) -> SandboxRow:
        """What the host needs to lay out a sandbox; never stored (a claim stores its own)."""
        return SandboxRow(
            id=sandbox_id,
            org_id="",
            template_id=template.id,
            template_name=template.name,
            runtime=self.host.backend_named(template.runtime).name,
            vcpu=WARM_VCPU,
            memory=WARM_MEMORY_MIB,
            disk=self.host.settings.disk_mib,
            timeout=0,
            auto_pause=False,
            state=State.STARTING,
            env_vars={},
            network_policy=None,
            base_snapshot_id=None,
        )

    async def _boot_one(self, template: Template) -> WarmSandbox:
        host = self.host
        row = self._transient_row(new_sandbox_id(), template)
        slot = await host.pool.acquire()
        try:
            await host.attach_disk(row)
            host.write_etc(row, slot)
            if host.egress is not None:  # the default policy's rules: a claim that wants
                await host.egress.preinstall(slot, None)  # them has no rules left to write
            await host.boot_ready(row, template, host.spec_for(row, template, slot), slot)
        except BaseException:
            await self.discard(WarmSandbox(row.id, template, slot))
            raise
        host.pool.refill()  # now that this boot is done (see NetworkPool.acquire)
        return WarmSandbox(row.id, template, slot)

    async def discard(self, warm: WarmSandbox) -> None:
        host = self.host
        row = self._transient_row(warm.sandbox_id, warm.template)
        await host.backend_for(row).halt(host.spec_for(row, warm.template, warm.slot))
        if host.egress is not None:
            await host.egress.detach(warm.sandbox_id, warm.slot)
        host.detach_disk(row)
        await host.pool.release(warm.slot)
        try:  # the sandbox may have written to its disk layer: a tree of any depth
            await asyncio.to_thread(remove_host_tree, host.sandbox_dir(warm.sandbox_id))
        except OSError:
            log.exception("removing warm sandbox %s's directory failed", warm.sandbox_id)

    async def _fill_forever(self, name: str) -> None:
        """``name``'s lane: its pool back to size after each wake, one boot at a time."""
        wake, ready = self._wake[name], self._ready[name]
        while True:
            await wake.wait()
            wake.clear()
            while len(ready) < self.sizes[name]:
                if self.quiet is not None:
                    await self.quiet()
                template = self.host.templates.get(name)
                if template is None or not claimable(template, None):
                    break  # until a build of it wakes the pool
                try:
                    ready.append(await self._boot_one(template))
                except Exception:
                    log.exception("could not prepare a warm %s sandbox", name)
                    await asyncio.sleep(5)
                    break

    async def close(self) -> None:
        for filler in self._fillers:
            await cancel_and_wait(filler)
        if self._discarding:
            await asyncio.gather(*self._discarding, return_exceptions=True)
        for queue in self._ready.values():
            while queue:
                await self.discard(queue.popleft())
