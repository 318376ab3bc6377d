"""The one interface every isolation backend implements.

A backend turns a ``SandboxSpec`` into running processes and back. It owns the root filesystem
mount, the container and its cgroups; the network namespace is made by ``atoll.network`` and
handed in through the spec, so egress rules hold whatever the backend.

``CgroupBackend`` is what the two backends (``oci``, ``gvisor``) share: a sandbox is a runtime's
container in a cgroup of its own under ``cgroup_parent``, on an overlay root, so halting it,
pausing and resuming it, killing its processes, finding leftover cgroups and marking a
checkpoint image complete work the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Literal, Protocol

from atoll.runtime import cgroups, overlay, procfs, reaping
from atoll.runtime.commands import CommandFailed, run
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

    async def stop_leftover_commands(self) -> list[str]:
        """Kill the runtime commands a previous server left running; returns what was killed."""


# written last, atomically, once CRIU has succeeded: after a crash only an image with it is
# restored (a dump cut short leaves files but never this one)
CHECKPOINT_COMPLETE = "atoll-complete"

# the subcommands of a runtime's processes that are a live sandbox (gVisor's sentry, its gofer)
LIVE_SANDBOX_SUBCOMMANDS = frozenset({"boot", "gofer"})


def checkpoint_complete(image_dir: Path) -> bool:
    return (image_dir / CHECKPOINT_COMPLETE).is_file()


def mark_checkpoint_complete(image_dir: Path) -> None:
    """The marker, durable: on ext4 (data=ordered) its fsync commits the image's data first."""
    temporary = image_dir / f"{CHECKPOINT_COMPLETE}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"complete\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, image_dir / CHECKPOINT_COMPLETE)
    fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CgroupBackend:
    """The halt, pause and cgroup handling the OCI and gVisor backends share. A subclass sets
    ``binary``, ``state_root`` and ``cgroup_parent`` and gives the runtime's argv (``_argv``) and
    its own ``halt_by_id`` (which calls ``kill_cgroup``, then removes what its runtime keeps)."""

    name: str
    binary: str
    state_root: Path
    cgroup_parent: str
    # what the sandbox's commands have; a terminal takes it too. None: the runtime's own (gVisor's
    # sentry gives its processes 0 inside; the host's OOM score is the sentry's, from the spec)
    command_oom_score_adj: int | None = None

    def _argv(self, *args: str) -> list[str]:
        raise NotImplementedError

    async def halt_by_id(self, sandbox_id: str) -> None:
        raise NotImplementedError

    async def halt(self, spec: SandboxSpec) -> None:
        await self.halt_by_id(spec.sandbox_id)
        overlay.unmount(spec.rootfs)
        with contextlib.suppress(FileNotFoundError):
            (spec.sandbox_dir / "config.json").unlink()

    async def pause(self, sandbox_id: str) -> None:
        await run(self._argv("pause", sandbox_id), timeout=30)

    async def resume(self, sandbox_id: str) -> None:
        """Resume a frozen sandbox; one already running (a freeze, or a resume, cut short) is fine.
        Whether it runs is asked of the runtime (``state``), never read from its error message:
        runc and runsc word "not paused" differently."""
        try:
            await run(self._argv("resume", sandbox_id), timeout=30)
        except CommandFailed:
            rc, out, _ = await run(self._argv("state", sandbox_id), timeout=30, check=False)
            try:
                status = json.loads(out).get("status") if rc == 0 else None
            except ValueError:
                status = None
            if status != "running":
                raise

    async def kill_cgroup(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox through its cgroup (it works on frozen sandboxes
        too, and a runtime's forced delete of a live one spends seconds freezing and polling),
        and reap those the runtime's ``run --detach`` orphaned to us (see reaping.py)."""
        members = cgroups.pids_in_group(self.cgroup_parent, sandbox_id)
        cgroups.kill_group(self.cgroup_parent, sandbox_id)
        await asyncio.gather(*(reaping.reap_when_exits(pid, timeout=5) for pid in members))

    async def stop_leftover_commands(self) -> list[str]:
        """A server killed while a runtime command ran (``run --detach`` of a create, a restore)
        leaves the command running, orphaned: one that finished after the start-up sweep listed
        the containers would make a container no record owns, which nothing would ever remove.
        So before the sweep they are killed (what they made is then swept like any leftover).
        A live sandbox's own runtime processes (gVisor's sentry and gofer carry the same
        ``--root``) are kept: the sweep adopts them."""
        pids = [
            stat.pid
            for stat in procfs.processes()
            if stat.pid != os.getpid() and stat.ppid != os.getpid() and self._is_leftover_command(stat.pid)
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.gather(*(reaping.exited(pid, timeout=5) for pid in pids))
        return [f"{self.name} command left running (pid {pid})" for pid in pids]

    def _is_leftover_command(self, pid: int) -> bool:
        argv = procfs.cmdline(pid)
        if not argv or not procfs.has_flag(argv, "--root", str(self.state_root)):
            return False
        return not LIVE_SANDBOX_SUBCOMMANDS.intersection(argv)

    async def orphan_cgroups(self, known: set[str]) -> list[str]:
        """Remove cgroups of sandboxes not in ``known``; returns what was removed."""
        removed = []
        for name in cgroups.children(self.cgroup_parent) - known:
            cgroups.remove_group(self.cgroup_parent, name)
            removed.append(name)
        return removed
