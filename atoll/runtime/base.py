"""The one interface every isolation backend implements.

A backend turns a ``SandboxSpec`` into running processes and back. It owns the root filesystem
mount, the container and its cgroups; the network namespace is made by ``atoll.network`` and
handed in through the spec, so egress rules hold whatever the backend.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, Protocol

from atoll.runtime.spec import ExecRequest, ExecResult, SandboxSpec

BackendName = Literal["auto", "crun", "runc", "runsc"]

# name -> "module:attr", resolved once at start-up (an optional backend is imported only when chosen)
BACKENDS: dict[str, str] = {
    "crun": "atoll.runtime.oci:OCIBackend",
    "runc": "atoll.runtime.oci:OCIBackend",
    "runsc": "atoll.runtime.gvisor:GVisorBackend",  # gVisor: a user-space kernel per sandbox
}


def resolve(name: BackendName) -> str:
    """``auto`` picks runc when a working CRIU makes pause durable and snapshots possible,
    else crun (faster to start and exec, pause by freezing only)."""
    if name != "auto":
        return name
    from atoll.runtime import criu

    return "runc" if shutil.which("runc") and criu.works() else "crun"


class RuntimeBackend(Protocol):
    name: str
    can_checkpoint: bool  # checkpoint/restore available (else pause freezes and snapshots are off)

    async def boot(self, spec: SandboxSpec) -> None:
        """Mount the root, start PID 1. On failure, everything it made is undone before raising."""

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        """Run one command to completion (or its timeout, killing its whole session)."""

    async def set_limits(self, sandbox_id: str, *, vcpu: int, memory_mib: int) -> None:
        """Change a running sandbox's CPU quota and lower its memory limit."""

    async def pause(self, sandbox_id: str) -> None:
        """Stop compute; memory stays resident."""

    async def resume(self, sandbox_id: str) -> None:
        """Thaw a frozen sandbox; one that already runs is fine (a freeze or a resume cut short)."""

    async def checkpoint(self, sandbox_id: str, image_dir: Path, *, leave_running: bool) -> None:
        """Save processes, memory and open files; without ``leave_running`` they end."""

    async def restore(self, spec: SandboxSpec, image_dir: Path) -> None:
        """Start the sandbox from a checkpoint image; on failure nothing is left running."""

    async def halt(self, spec: SandboxSpec) -> None:
        """Kill every process, remove the container and its cgroups, unmount the root.
        Keeps the upper dir. Idempotent: safe on a half-made or already-gone sandbox."""

    async def halt_by_id(self, sandbox_id: str) -> None:
        """Kill and remove a container known only by id (a leftover no record describes)."""

    async def running_ids(self) -> set[str]:
        """Ids of the sandboxes this backend has on the host right now."""

    async def orphan_cgroups(self, known: set[str]) -> list[str]:
        """Remove cgroups of sandboxes not in ``known``; returns what was removed."""
