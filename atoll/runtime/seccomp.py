"""The seccomp filter every OCI sandbox gets.

Default allow with a deny list, like a container engine's profile turned inside out: the calls
below let a process reach outside its namespaces or into the kernel's global state. They fail
with EPERM (clone3 with ENOSYS, so libc falls back to clone, whose namespace flags we can see).
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38

DENIED_SYSCALLS: tuple[str, ...] = (
    # filesystems and the root
    "mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "swapon", "swapoff", "quotactl", "quotactl_fd",
    # namespaces: entering or making new ones
    "setns", "unshare",
    # the kernel itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "reboot", "syslog", "acct",
    "bpf", "perf_event_open", "lookup_dcookie", "iopl", "ioperm", "uselib", "nfsservctl",
    "keyctl", "add_key", "request_key", "userfaultfd", "vm86", "vm86old",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # host time
    "settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64",
    "adjtimex", "stime",
)  # fmt: skip

# clone flags that would create namespaces (CLONE_NEWNS ... CLONE_NEWNET, CLONE_NEWTIME)
CLONE_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080,
)  # fmt: skip


def profile() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in CLONE_NAMESPACE_FLAGS:
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    }
