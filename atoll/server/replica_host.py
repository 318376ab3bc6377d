"""The host of an API replica (``atoll serve --role api``, docs/cluster.md), which runs no
sandbox: nothing of one is ever here (``atoll.runtime.absent``). The replica's own code answers
from the shared store for a sandbox whose node is down, as routes do for any sandbox; tearing
one down here (a delete of a ``failed`` sandbox) releases nothing, since its node holds it all
and removes it when it comes back and reconciles; booting, pausing or resuming one here is 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atoll.network.addressing import AddressPlan, Slot
from atoll.network.pool import NetworkPool
from atoll.runtime import absent
from atoll.runtime.base import RuntimeBackend
from atoll.server.host import SandboxHost
from atoll.server.settings import Settings
from atoll.store.models import SandboxRow
from atoll.templates.registry import Template, TemplateRegistry


class ReplicaHost(SandboxHost):
    def __init__(self, *, settings: Settings, templates: TemplateRegistry) -> None:
        plan = AddressPlan(settings.subnet, instance=settings.instance, iface_prefix=settings.iface_prefix)
        super().__init__(
            settings=settings,
            backend=absent.NoRuntime(),
            pool=NetworkPool(plan, target_size=0),  # never started: it makes no namespace
            templates=templates,
            egress=None,
        )

    def backend_named(self, name: str) -> RuntimeBackend:
        return self.backend  # whichever runtime the sandbox's node runs it with, none is here

    def slot_of(self, row: SandboxRow) -> Slot | None:
        return None  # its network slot is its node's

    async def boot(self, row: SandboxRow, template: Template, image: Path | None = None) -> dict[str, Any]:
        absent.refuse(row.id)

    async def teardown(self, row: SandboxRow, *, keep_disk: bool) -> None:
        await self.end_sessions(row.id)

    async def pause(self, row: SandboxRow) -> str:
        absent.refuse(row.id)

    async def unpause(self, row: SandboxRow) -> None:
        absent.refuse(row.id)

    async def thaw(self, row: SandboxRow) -> None:
        absent.refuse(row.id)
