"""Builds an OCI runtime ``config.json`` from a ``SandboxSpec``. Pure: no I/O, unit-tested."""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from atoll.runtime import seccomp
from atoll.runtime.spec import SandboxSpec

CPU_PERIOD_US = 100_000
MAX_OPEN_FILES = 65536
MAX_PTYS = 1024  # terminals one sandbox may hold open at once
DEVPTS_OPTIONS = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5", f"max={MAX_PTYS}"]

# What a root user inside needs to install packages and run servers, and nothing that reaches
# outside: no NET_RAW (spoofing), MKNOD, SYS_ADMIN, SYS_PTRACE, SETFCAP or SETPCAP.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE",
]  # fmt: skip

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts",
    "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/kallsyms", "/proc/sysrq-trigger",
    # the host's physical memory layout, kernel heap and build: help to aim a kernel exploit
    "/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup", "/proc/slabinfo", "/proc/vmallocinfo",
    "/proc/pagetypeinfo", "/proc/zoneinfo", "/proc/buddyinfo", "/proc/iomem", "/proc/ioports",
    "/proc/modules", "/proc/config.gz", "/proc/mtrr", "/sys/kernel/vmcoreinfo",
    "/sys/kernel/notes", "/sys/kernel/debug", "/sys/kernel/tracing",
    # the host's block devices (its loop devices back the sandboxes' disks)
    "/proc/fs/ext4", "/proc/fs/jbd2", "/sys/fs/ext4", "/sys/block", "/sys/class/block",
    "/sys/devices/virtual/block", "/sys/dev/block",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]

# the path inside the sandbox where Atoll's static helpers are bind-mounted
OOM_SCORE_ADJ = 500  # the sandbox's processes go before the host's when memory runs out
HELPER_DIR = "/.atoll"
INIT_PATH = f"{HELPER_DIR}/init"
BUSYBOX_PATH = f"{HELPER_DIR}/busybox"


def env_list(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


def _rlimits() -> list[dict[str, Any]]:
    # never above the server's own hard limit: raising it needs CAP_SYS_RESOURCE, not always held
    nofile = min(MAX_OPEN_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]


def process_user(spec: SandboxSpec) -> dict[str, Any]:
    """PID 1's user (the image's USER): the agent, and so every command and main process."""
    user: dict[str, Any] = {"uid": spec.uid, "gid": spec.gid}
    if spec.groups:
        user["additionalGids"] = list(spec.groups)
    return user


def _owner(spec: SandboxSpec) -> list[str]:
    return [f"uid={spec.uid}", f"gid={spec.gid}"] if spec.uid or spec.gid else []


def _mounts(spec: SandboxSpec, proc_binds: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            # max: a sandbox's own share of the host's PTYs (kernel.pty.max is one pool for all)
            "options": list(DEVPTS_OPTIONS),
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            # exec output spools here (see oci_exec); its pages are charged to the sandbox
            "destination": f"{HELPER_DIR}/run",
            "type": "tmpfs",
            "source": "tmpfs",
            # the agent's socket and spools: its own, whoever it runs as (the image's USER)
            "options": ["nosuid", "nodev", "noexec", "mode=700", "size=262144k", *_owner(spec)],
        },
    ]
    for source, destination in proc_binds:  # e.g. LXCFS's meminfo over /proc/meminfo (lxcfs.py)
        options = ["bind", "ro", "nosuid", "nodev", "noexec"]
        mounts.append({"destination": destination, "type": "bind", "source": str(source), "options": options})
    for bind in spec.binds:
        options = ["bind", "nosuid", "nodev"] + (["ro"] if bind.read_only else ["rw"])
        mounts.append(
            {"destination": bind.destination, "type": "bind", "source": str(bind.source), "options": options}
        )
    return mounts


def build(
    spec: SandboxSpec,
    *,
    cgroups_path: str,
    init_args: list[str] | None = None,
    proc_binds: list[tuple[Path, str]] | None = None,
) -> dict[str, Any]:
    """``init_args`` is the sandbox's PID 1; it defaults to the reaping init in pause mode.
    ``proc_binds`` are (host file, path inside) read-only binds over /proc files."""
    args = init_args or [INIT_PATH, "-P"]
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.netns_path is not None:
        namespaces.append({"type": "network", "path": str(spec.netns_path)})
    else:
        namespaces.append({"type": "network"})
    memory = spec.memory_mib * 1024 * 1024
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": process_user(spec),
            "args": args,
            "env": env_list(spec.env),
            "cwd": spec.workdir,
            "capabilities": {k: list(CAPABILITIES) for k in ("bounding", "effective", "permitted")},
            "rlimits": _rlimits(),
            "noNewPrivileges": True,
            "oomScoreAdj": OOM_SCORE_ADJ,
        },
        "root": {"path": str(spec.rootfs), "readonly": False},
        "hostname": spec.hostname,
        "mounts": _mounts(spec, proc_binds or []),
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    # the usual harmless character devices: null, zero, full, random, urandom, tty, ptmx
                    *[
                        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
                        for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2))
                    ],
                    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
                ],
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": spec.vcpu * CPU_PERIOD_US, "period": CPU_PERIOD_US},
                "pids": {"limit": spec.pids_limit},
            },
            "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"},
            "seccomp": seccomp.profile(),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def command_process(
    user_file: Path, cwd: str, env: Mapping[str, str], command: Sequence[str], *, terminal: bool
) -> dict[str, Any]:
    """An OCI ``process`` for ``exec --process``: a command (the agent's fallback, ``oci_exec``)
    or a terminal, as the user ``user_file`` recorded (``OCIBackend._prepare_bundle``) with its
    supplementary groups (root for a sandbox booted before its user was recorded, as it always
    ran) and the capabilities, limits and OOM score the sandbox's commands get. Named in full:
    crun's options cannot name supplementary groups, and without a list both runtimes would hand
    the process PID 1's capabilities, which in a user namespace include the agent's own
    CAP_SETPCAP (``apply_userns``). ``env`` is the whole environment (nothing is merged in)."""
    identity: dict[str, Any] = {"uid": 0, "gid": 0}
    try:
        user = json.loads(user_file.read_text())
        groups = [int(gid) for gid in user.get("additionalGids", [])]
        identity = {"uid": int(user["uid"]), "gid": int(user["gid"]), "additionalGids": groups}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {
        "terminal": terminal,
        "user": identity,
        "args": list(command),
        "env": [f"{key}={value}" for key, value in env.items()],
        "cwd": cwd,
        "capabilities": {k: list(CAPABILITIES) for k in ("bounding", "effective", "permitted")},
        "rlimits": _rlimits(),
        "noNewPrivileges": True,
        "oomScoreAdj": OOM_SCORE_ADJ,
    }


POOL_NETNS_ANNOTATION = "org.atoll.pool-netns"


def join_userns(
    config: dict[str, Any], mappings: list[dict[str, int]], userns_path: Path, *, rootfs: Path
) -> dict[str, Any]:
    """``config`` in the user namespace made with its network slot (``atoll.runtime.userns_slot``),
    joined by path like the slot's network namespace, which it owns: nothing to move or set up
    at boot. ``mappings`` are the ones that user namespace has (runc and crun set up the
    rootfs with them; they do not write them when joining)."""
    config["linux"]["namespaces"].append({"type": "user", "path": str(userns_path)})
    return _in_userns(config, mappings, rootfs)


def apply_userns(
    config: dict[str, Any],
    mappings: list[dict[str, int]],
    prestart_hook: dict[str, Any] | None,
    *,
    rootfs: Path,
) -> dict[str, Any]:
    """``config`` in a user namespace the runtime makes (a restore: CRIU makes the namespaces).

    Its network namespace is then made by the runtime too, inside the user namespace: the
    slot's, owned by another user namespace, could not be joined from it, and from inside
    neither sysfs could be mounted nor ``<runtime> exec`` join it. ``prestart_hook`` moves the
    slot's interface into it before anything runs (see ``userns_net.network_hook``)."""
    linux = config["linux"]
    pool_netns = [ns["path"] for ns in linux["namespaces"] if ns["type"] == "network" and "path" in ns]
    if pool_netns:  # where the interface comes from, for people and tools reading the config
        config.setdefault("annotations", {})[POOL_NETNS_ANNOTATION] = pool_netns[0]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    linux["namespaces"] += [{"type": "network"}, {"type": "user"}]
    if prestart_hook is not None:
        config.setdefault("hooks", {}).setdefault("prestart", []).append(prestart_hook)
    return _in_userns(config, mappings, rootfs)


def _in_userns(config: dict[str, Any], mappings: list[dict[str, int]], rootfs: Path) -> dict[str, Any]:
    config["root"]["path"] = str(rootfs)  # userns.show_root
    linux = config["linux"]
    linux["uidMappings"] = mappings
    linux["gidMappings"] = mappings
    # the range is read in the user namespace that owns the network namespace: the sandbox's
    size = mappings[0]["size"]
    linux.setdefault("sysctl", {})["net.ipv4.ping_group_range"] = f"0 {size - 1}"
    # the agent's alone (agent.c drops it from the bounding set at start): what keeps it
    # untraceable from inside while it stays dumpable for CRIU (see agent.c's main)
    caps = config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = [*caps[kind], "CAP_SETPCAP"]
    return config
