"""Host cgroup facts: which hierarchy is in use, the crun hybrid fix, freezing, and leak sweeping."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

from atoll.runtime import oci_config
from atoll.runtime.commands import run_sync

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "systemd",
)


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def ensure_crun_compatible() -> None:
    """crun refuses a hybrid host whose v2 hierarchy owns a controller (here: hugetlb).
    Mounting hugetlb as a v1 hierarchy moves it off v2; needed once per boot."""
    if is_v2():
        return
    target = CGROUP_ROOT / "hugetlb"
    if os.path.ismount(target):
        return
    target.mkdir(exist_ok=True)
    run_sync(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", str(target)], timeout=30)


def group_dirs(parent: str) -> list[Path]:
    """Every directory of the cgroup ``parent`` across hierarchies (v1: one per controller)."""
    if is_v2():
        return [CGROUP_ROOT / parent.strip("/")]
    return [CGROUP_ROOT / c / parent.strip("/") for c in V1_CONTROLLERS if (CGROUP_ROOT / c).is_dir()]


def children(parent: str) -> set[str]:
    names: set[str] = set()
    hybrid = [] if is_v2() else [CGROUP_ROOT / "unified" / parent.strip("/")]  # see remove_group
    for d in [*group_dirs(parent), *hybrid]:
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_dir())
    return names


def forks_refused(parent: str, name: str) -> int:
    """How often the group's pids limit has refused a fork or clone (``pids.events``: max); 0 when
    the group or its pids controller is missing."""
    base = CGROUP_ROOT if is_v2() else CGROUP_ROOT / "pids"
    try:
        text = (base / parent.strip("/") / name / "pids.events").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "max" and value.strip().isdigit():
            return int(value)
    return 0


def pids_in_group(parent: str, name: str) -> list[int]:
    found: set[int] = set()
    for d in group_dirs(parent):
        group = d / name
        for procs in group.rglob("cgroup.procs") if group.is_dir() else ():
            found.update(int(pid) for pid in procs.read_text().split())
    return sorted(found)


def _freezer(parent: str, name: str) -> tuple[Path, Path, tuple[str, str]]:
    """The group's freeze control, the file that says whether it is frozen, and the (frozen,
    thawed) values written to the control."""
    if is_v2():
        group = CGROUP_ROOT / parent.strip("/") / name
        return group / "cgroup.freeze", group / "cgroup.events", ("1", "0")
    group = CGROUP_ROOT / "freezer" / parent.strip("/") / name
    return group / "freezer.state", group / "freezer.state", ("FROZEN", "THAWED")


def is_frozen(parent: str, name: str) -> bool:
    """Whether the group is frozen (not just freezing); OSError when it is gone."""
    _, state, _ = _freezer(parent, name)
    text = state.read_text()
    if state.name == "cgroup.events":
        return "frozen 1" in text.splitlines()
    return text.strip() == "FROZEN"


def start_freeze(parent: str, name: str) -> None:
    """Ask the kernel to freeze the group (it is frozen once ``is_frozen``); OSError when gone."""
    control, _, (frozen, _) = _freezer(parent, name)
    control.write_text(frozen)


def thaw(parent: str, name: str) -> None:
    """Thaw the group (best effort: it may be gone)."""
    control, _, (_, thawed) = _freezer(parent, name)
    with contextlib.suppress(OSError):
        control.write_text(thawed)


def kill_group(parent: str, name: str) -> None:
    """SIGKILL every process in the group (thawed first: a frozen task dies only once thawed)."""
    for d in group_dirs(parent):
        group = d / name
        freezer_state = group / "freezer.state"
        if freezer_state.exists():
            freezer_state.write_text("THAWED")
        for procs in group.rglob("cgroup.procs") if group.is_dir() else ():
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_group(parent: str, name: str) -> None:
    """Kill whatever is still inside and rmdir the group in every hierarchy."""
    kill_group(parent, name)
    # a hybrid host's cgroup2 mount gets the group too (runc joins it there as well, and removes
    # it itself only when it lives to `delete`: not when it was killed mid-create)
    hybrid = [] if is_v2() else [CGROUP_ROOT / "unified" / parent.strip("/")]
    for d in [*group_dirs(parent), *hybrid]:
        group = d / name
        if not group.is_dir():
            continue
        subgroups = [p for p in group.rglob("*") if p.is_dir()]
        for sub in [*sorted(subgroups, key=lambda p: len(p.parts), reverse=True), group]:
            _rmdir_when_empty(sub)


def remove_parent(parent: str) -> list[Path]:
    """rmdir the instance's parent group in every hierarchy where it holds no sandbox group
    (a clean shutdown with none left); the removed directories."""
    removed: list[Path] = []
    # a hybrid host's cgroup2 mount gets the group too (runc joins it there as well)
    hybrid = [] if is_v2() else [CGROUP_ROOT / "unified" / parent.strip("/")]
    for d in [*group_dirs(parent), *hybrid]:
        if not d.is_dir() or any(p.is_dir() for p in d.iterdir()):
            continue
        try:
            d.rmdir()
        except OSError as exc:  # EBUSY: something joined it meanwhile; it stays
            if exc.errno not in (errno.EBUSY, errno.ENOENT, errno.ENOTEMPTY):
                raise
            continue
        removed.append(d)
    return removed


def _rmdir_when_empty(group: Path, attempts: int = 100) -> None:
    """A killed task leaves its cgroup a moment after SIGKILL; rmdir says EBUSY until then."""
    for _ in range(attempts):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.01)


def set_limits(parent: str, name: str, *, vcpu: int, memory_mib: int) -> None:
    """Change a running group's CPU quota (``vcpu`` CPUs) and memory limit (a warm sandbox being
    claimed), in the units of the sandbox's OCI config.

    Memory is only ever lowered here (a warm sandbox starts at the maximum), so the limit goes
    first and the memory+swap limit second, the order the kernel accepts when lowering."""
    cpu_period_us = oci_config.CPU_PERIOD_US
    cpu_quota_us = vcpu * cpu_period_us
    memory_bytes = memory_mib * 1024 * 1024
    if is_v2():
        group = CGROUP_ROOT / parent / name
        (group / "memory.max").write_text(str(memory_bytes))
        (group / "cpu.max").write_text(f"{cpu_quota_us} {cpu_period_us}")
        return
    memory = CGROUP_ROOT / "memory" / parent / name
    (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
    memsw = memory / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        memsw.write_text(str(memory_bytes))
    cpu = CGROUP_ROOT / "cpu" / parent / name
    (cpu / "cpu.cfs_period_us").write_text(str(cpu_period_us))
    (cpu / "cpu.cfs_quota_us").write_text(str(cpu_quota_us))
