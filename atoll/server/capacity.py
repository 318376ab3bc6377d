"""Host capacity: CPU and memory are budgets that sandboxes draw on while their processes exist.

A sandbox counts from the moment it is admitted (``starting``, or a brand-new one booting before
its record exists: ``reserve``) until its processes are gone (deleted, stopped, or paused by
checkpoint, which moves its memory to disk). The budget is the
host's CPUs and memory times a configurable over-commit ratio; a create, start, restore or
resume that would exceed it gets 503 with ``Retry-After`` at once instead of a slow failure."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from atoll._exceptions import CapacityError
from atoll.store.repo import Repository

RETRY_AFTER_S = 5
HOST_MEMORY_RESERVE_MIB = 1024  # left to the host itself: control plane, page cache, kernel


def host_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def host_size() -> tuple[int, int]:
    """What the host offers sandboxes before over-commit: its CPUs and its memory in MiB less
    what the host itself keeps."""
    return os.cpu_count() or 1, max(512, host_memory_mib() - HOST_MEMORY_RESERVE_MIB)


@dataclass(frozen=True)
class Budget:
    vcpu: int
    memory_mib: int

    @classmethod
    def for_host(cls, *, cpu_overcommit: float, memory_overcommit: float) -> Budget:
        cpus, memory = host_size()
        return cls(vcpu=int(cpus * cpu_overcommit), memory_mib=int(memory * memory_overcommit))


class Capacity:
    def __init__(self, repo: Repository, budget: Budget) -> None:
        self.repo = repo
        self.budget = budget
        # Admission is check-then-record; this short section keeps two creates from both
        # seeing the same free room. Booting happens outside it, so creates still overlap.
        self._admission = asyncio.Lock()
        self._reserved: dict[str, tuple[str, int, int]] = {}  # sandbox id -> (org, vCPUs, MiB)

    async def _check(self, vcpu: int, memory_mib: int) -> None:
        used_vcpu, used_memory = await self.repo.resource_usage()
        used_vcpu += sum(v for _, v, _ in self._reserved.values())
        used_memory += sum(m for _, _, m in self._reserved.values())
        if used_vcpu + vcpu > self.budget.vcpu or used_memory + memory_mib > self.budget.memory_mib:
            raise CapacityError(
                f"no capacity on this host: {used_vcpu}/{self.budget.vcpu} vCPU and "
                f"{used_memory}/{self.budget.memory_mib} MiB in use; retry later",
                retry_after=RETRY_AFTER_S,
            )

    @contextlib.asynccontextmanager
    async def admit(self, vcpu: int, memory_mib: int) -> AsyncIterator[None]:
        """Hold while recording the new claim (inserting the row or changing its state)."""
        async with self._admission:
            await self._check(vcpu, memory_mib)
            yield

    @contextlib.asynccontextmanager
    async def reserve(self, sandbox_id: str, org_id: str, vcpu: int, memory_mib: int) -> AsyncIterator[None]:
        """Room for a brand-new sandbox that boots before its record exists: it counts from
        here, and the block records it before leaving (or fails, and the room is free again)."""
        async with self._admission:
            await self._check(vcpu, memory_mib)
            self._reserved[sandbox_id] = (org_id, vcpu, memory_mib)
        try:
            yield
        finally:
            del self._reserved[sandbox_id]

    async def report(self) -> dict[str, int]:
        used_vcpu, used_memory = await self.repo.resource_usage()
        used_vcpu += sum(v for _, v, _ in self._reserved.values())
        used_memory += sum(m for _, _, m in self._reserved.values())
        return {
            "vcpu_budget": self.budget.vcpu,
            "vcpu_used": used_vcpu,
            "memory_mib_budget": self.budget.memory_mib,
            "memory_mib_used": used_memory,
        }
