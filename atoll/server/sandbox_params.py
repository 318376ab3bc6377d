"""What a create asks for, and the record it starts from (never stored before it runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from atoll._policy import NetworkPolicy
from atoll._states import State
from atoll.server.host import new_sandbox_id
from atoll.store.models import SandboxRow
from atoll.templates.registry import Template


@dataclass(frozen=True, kw_only=True)
class CreateParams:
    template_name: str
    vcpu: int
    memory: int
    timeout: int
    auto_pause: bool = False
    env_vars: dict[str, str] = field(default_factory=dict)
    network_policy: NetworkPolicy | None = None

    def new_row(self, org_id: str, template: Template, *, runtime: str, disk_mib: int) -> SandboxRow:
        """The brand-new sandbox's record, ``starting`` under a fresh id, in memory only."""
        return SandboxRow(
            id=new_sandbox_id(),
            org_id=org_id,
            template_id=template.id,
            template_name=template.name,
            runtime=runtime,
            vcpu=self.vcpu,
            memory=self.memory,
            disk=disk_mib,
            timeout=self.timeout,
            auto_pause=self.auto_pause,
            state=State.STARTING,
            env_vars=dict(self.env_vars),
            network_policy=self.network_policy,
        )
