"""The runtime of a process that runs no sandboxes: an API replica (``atoll serve --role api``,
docs/cluster.md). It places creates on nodes and forwards everything else about a sandbox to
the node that runs it, so nothing of a sandbox is ever on its host: it prepares nothing there
(no runtime binary, cgroups, network namespaces or firewall) and needs no privileges.

Its own code still answers from the shared store for a sandbox whose node is down (a delete of
a ``failed`` one, say): what asks the host finds nothing here, and what would run something
here raises ``NodeUnreachable`` (503: only the sandbox's node can, once it is back)."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from atoll._exceptions import NodeUnreachable
from atoll.runtime.spec import ExecRequest, ExecResult, SandboxSpec

NAME = "none"


def refuse(sandbox_id: str) -> NoReturn:
    raise NodeUnreachable(
        f"sandbox {sandbox_id} runs on a node of the cluster, not on this API replica, and that "
        "node is not up; retry once it is back"
    )


class NoRuntime:
    """``RuntimeBackend`` of a host that runs no sandbox: every query finds none."""

    name = NAME
    can_checkpoint = False

    async def boot(self, spec: SandboxSpec) -> None:
        refuse(spec.sandbox_id)

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        refuse(sandbox_id)

    async def set_limits(self, sandbox_id: str, *, vcpu: int, memory_mib: int) -> None:
        refuse(sandbox_id)

    async def pause(self, sandbox_id: str) -> None:
        refuse(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        refuse(sandbox_id)

    async def checkpoint(self, sandbox_id: str, image_dir: Path, *, leave_running: bool) -> None:
        refuse(sandbox_id)

    async def restore(self, spec: SandboxSpec, image_dir: Path) -> None:
        refuse(spec.sandbox_id)

    async def halt(self, spec: SandboxSpec) -> None:
        """Nothing of the sandbox is here to halt."""

    async def halt_by_id(self, sandbox_id: str) -> None:
        """Nothing of the sandbox is here to halt."""

    async def running_ids(self) -> set[str]:
        return set()

    async def orphan_cgroups(self, known: set[str]) -> list[str]:
        return []

    async def stop_leftover_commands(self) -> list[str]:
        return []
