"""In-memory stand-ins for the parts of a host the lifecycle drives: a runtime backend behind
``RuntimeBackend``, the network pool without namespaces, and sandbox disks without mounts.

Each keeps books of what it holds (``running``, ``paused``, ``taken``, ``attached``), so a test
can check that a failure left nothing behind, and takes injected failures and hangs per
operation (``fail`` / ``hang``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from atoll.network.addressing import Slot
from atoll.network.pool import NetworkPool
from atoll.runtime.commands import CommandFailed
from atoll.runtime.disk import DiskSpec
from atoll.runtime.spec import ExecRequest, ExecResult, SandboxSpec


class InjectedFailure(RuntimeError):
    """What a fake operation raises when a test asked it to fail."""


@dataclass
class Faults:
    """Per operation name: the exception it raises, or that it hangs (until cancelled); for
    every call from now on, or for the next ``times`` calls."""

    failing: dict[str, BaseException] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    remaining: dict[str, int] = field(default_factory=dict)  # operation -> calls its fault has left
    calls: list[str] = field(default_factory=list)
    delay_s: float = 0.0  # every operation takes this long (concurrent work overlaps)

    def fail(self, operation: str, exc: BaseException | None = None, *, times: int | None = None) -> None:
        self.failing[operation] = exc or InjectedFailure(f"{operation} failed (injected)")
        self._limit(operation, times)

    def hang(self, operation: str, *, times: int | None = None) -> None:
        self.hanging.add(operation)
        self._limit(operation, times)

    def _limit(self, operation: str, times: int | None) -> None:
        if times is None:
            self.remaining.pop(operation, None)
        else:
            self.remaining[operation] = times

    def clear(self) -> None:
        self.failing.clear()
        self.hanging.clear()
        self.remaining.clear()

    def _use(self, operation: str) -> None:
        left = self.remaining.get(operation)
        if left is None:
            return
        if left > 1:
            self.remaining[operation] = left - 1
            return
        del self.remaining[operation]
        self.failing.pop(operation, None)
        self.hanging.discard(operation)

    async def enter(self, operation: str) -> None:
        self.calls.append(operation)
        await asyncio.sleep(self.delay_s)  # a real operation always yields: concurrency shows up
        if operation in self.hanging:
            self._use(operation)
            await asyncio.Event().wait()  # until the caller's timeout cancels it
        if (exc := self.failing.get(operation)) is not None:
            self._use(operation)
            raise exc


class FakeBackend:
    """``RuntimeBackend`` in memory. A sandbox is ``running`` from boot or restore until halt;
    ``paused`` while frozen; a checkpoint writes its image directory (as CRIU would)."""

    def __init__(self, *, name: str = "fake", can_checkpoint: bool = True) -> None:
        self.name = name
        self.can_checkpoint = can_checkpoint
        self.faults = Faults()
        self.running: set[str] = set()
        self.paused: set[str] = set()
        self.limits: dict[str, tuple[int, int]] = {}
        self.peak = 0  # the most sandboxes it ever held at once

    def _started(self, sandbox_id: str) -> None:
        self.running.add(sandbox_id)
        self.peak = max(self.peak, len(self.holds))

    @property
    def holds(self) -> set[str]:
        """Every sandbox id this backend has any process of."""
        return self.running | self.paused

    async def boot(self, spec: SandboxSpec) -> None:
        await self.faults.enter("boot")
        self._started(spec.sandbox_id)

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        await self.faults.enter("exec")
        if sandbox_id not in self.running:
            raise CommandFailed(["exec"], 1, b"container is not running")
        return ExecResult(exit_code=0, stdout=b"", stderr=b"")

    async def set_limits(self, sandbox_id: str, *, vcpu: int, memory_mib: int) -> None:
        await self.faults.enter("set_limits")
        self.limits[sandbox_id] = (vcpu, memory_mib)

    async def pause(self, sandbox_id: str) -> None:
        await self.faults.enter("pause")
        self.running.discard(sandbox_id)
        self.paused.add(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        await self.faults.enter("resume")
        if sandbox_id not in self.holds:
            raise CommandFailed(["resume"], 1, b"container does not exist")
        # the protocol's contract: resuming one that already runs is fine
        self.paused.discard(sandbox_id)
        self.running.add(sandbox_id)

    async def checkpoint(self, sandbox_id: str, image_dir: Path, *, leave_running: bool) -> None:
        await self.faults.enter("checkpoint")
        image_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / "pages.img").write_bytes(b"memory")
        if not leave_running:
            self.running.discard(sandbox_id)
            self.paused.discard(sandbox_id)

    async def restore(self, spec: SandboxSpec, image_dir: Path) -> None:
        await self.faults.enter("restore")
        if not (image_dir / "pages.img").exists():
            raise CommandFailed(["restore"], 1, b"no checkpoint image")
        self._started(spec.sandbox_id)

    async def halt(self, spec: SandboxSpec) -> None:
        await self.faults.enter("halt")
        self.running.discard(spec.sandbox_id)
        self.paused.discard(spec.sandbox_id)

    async def halt_by_id(self, sandbox_id: str) -> None:
        await self.faults.enter("halt")
        self.running.discard(sandbox_id)
        self.paused.discard(sandbox_id)

    async def running_ids(self) -> set[str]:
        return set(self.holds)

    async def orphan_cgroups(self, known: set[str]) -> list[str]:
        return []

    async def stop_leftover_commands(self) -> list[str]:
        return []


class FakeNetworkPool(NetworkPool):
    """Slots by index, with no namespace behind them (``taken``: indices handed out)."""

    faults: Faults

    async def start(self, held_by_sandboxes: set[int]) -> list[str]:
        """Adopt what live sandboxes hold; no namespace to sweep, no refill."""
        self._taken = set(held_by_sandboxes)
        return []

    async def acquire(self) -> Slot:
        await self.faults.enter("acquire")
        return self.plan.slot(self._next_index())

    async def release(self, slot: Slot) -> None:
        self._taken.discard(slot.index)

    @property
    def taken(self) -> set[int]:
        return set(self._taken)


class FakeDisks:
    """``attach``/``detach`` for the manager: a plain directory, its attachment in the books."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.attached: set[Path] = set()

    async def attach(self, spec: DiskSpec) -> None:
        await self.faults.enter("attach")
        spec.mount_point.mkdir(parents=True, exist_ok=True)
        self.attached.add(spec.sandbox_dir)

    def detach(self, spec: DiskSpec) -> None:
        self.attached.discard(spec.sandbox_dir)
