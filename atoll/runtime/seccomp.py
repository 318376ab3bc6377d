"""The seccomp filter every OCI sandbox gets.

Default allow with a deny list, like a container engine's profile turned inside out: the calls
below let a process reach outside its namespaces or into the kernel's global state. They fail
with EPERM (clone3 with ENOSYS, so libc falls back to clone, whose namespace flags we can see).

Sockets are limited to the families a network namespace confines or that need no network at all
(unix, inet, inet6, netlink, packet): the others fail with EAFNOSUPPORT. ``AF_VSOCK`` reaches
the hypervisor of a VM host from any namespace; the rest (rds, tipc, alg, xdp, ...) are kernel
attack surface no sandbox workload needs. ``socketcall``, the 32-bit multiplexer whose arguments
a filter cannot see, fails with ENOSYS, so 32-bit programs use the filtered direct calls.
"""

from __future__ import annotations

from typing import Any

EPERM = 1
ENOSYS = 38
EAFNOSUPPORT = 97

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


# socket families a sandbox may open: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET (the last
# needs CAP_NET_RAW, which a sandbox lacks); every other one, and any value >= 18, is refused
ALLOWED_SOCKET_FAMILIES: tuple[int, ...] = (1, 2, 10, 16, 17)
_FIRST_UNLISTED_FAMILY = 18
_LOW_WORD = 0xFFFFFFFF  # the kernel reads the family as an int: compare the low 32 bits only


def _socket_rules() -> list[dict[str, Any]]:
    refused = [f for f in range(_FIRST_UNLISTED_FAMILY) if f not in ALLOWED_SOCKET_FAMILIES]
    rules: list[dict[str, Any]] = [
        {
            "names": ["socket", "socketpair"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EAFNOSUPPORT,
            "args": [{"index": 0, "value": _LOW_WORD, "valueTwo": family, "op": "SCMP_CMP_MASKED_EQ"}],
        }
        for family in refused
    ]
    rules.append(
        {
            "names": ["socket", "socketpair"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EAFNOSUPPORT,
            "args": [{"index": 0, "value": _FIRST_UNLISTED_FAMILY, "op": "SCMP_CMP_GE"}],
        }
    )
    rules.append({"names": ["socketcall"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return rules


def profile() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        *_socket_rules(),
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
