"""Escape attempts through the kernel: namespaces, modules, ptrace, the runtime binary, raw and
vsock sockets, host time, hostname and sysctls, host processes, kernel-global interfaces."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import ServerProcess
from tests.security._inside import (
    SYSCALL,
    VSOCK_VIA_SOCKET,
    VSOCK_VIA_SOCKETCALL,
    elf32,
    put_file,
    py_json,
)
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


@pytest.mark.attempt("enter or create namespaces (unshare, setns into /proc/1/ns, clone flags)")
def test_namespaces(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json
results = {}
for name, flag in (("user", 0x10000000), ("mount", 0x00020000), ("net", 0x40000000), ("pid", 0x20000000),
                   ("cgroup", 0x02000000), ("uts", 0x04000000), ("time", 0x00000080)):
    results["unshare " + name] = sc(272, flag)[1]
    results["clone " + name] = sc(56, flag | 17, 0, 0, 0, 0)[1]   # clone(flags|SIGCHLD)
for ns in ("mnt", "net", "pid", "user", "cgroup"):
    try:  # PID 1 (the agent) is not dumpable: its ns files need CAP_SYS_PTRACE even to open
        fd = os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)
    except OSError as exc:
        results["setns " + ns] = "absent" if exc.errno == errno.ENOENT else errno.errorcode[exc.errno]
        continue
    results["setns " + ns] = sc(308, fd, 0)[1]
results["clone3"] = sc(435, None, 0)[1]
print(json.dumps(results))
""",
    )
    refused = {k: v for k, v in seen.items() if k != "clone3"}
    if GVISOR:  # the sentry has no cgroup namespace: there is nothing to enter
        assert refused.pop("setns cgroup") == "absent", seen
    assert set(refused.values()) <= {"EPERM", "EACCES"}, seen
    assert seen["clone3"] == "ENOSYS"  # libc then falls back to clone, whose flags are checked
    blocked("EPERM (seccomp: unshare, setns, namespace flags of clone; clone3 ENOSYS); /proc/1/ns EACCES")


@pytest.mark.attempt("load or remove a kernel module (init_module, finit_module, delete_module)")
def test_kernel_modules(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json
fd = os.open("/bin/true", os.O_RDONLY)
print(json.dumps({"init_module": sc(175, b"\\x7fELF", 4, b"")[1], "finit_module": sc(313, fd, b"", 0)[1],
                  "delete_module": sc(176, b"overlay", 0)[1]}))
""",
    )
    assert set(seen.values()) == {"EPERM"}, seen
    blocked("EPERM (seccomp; and no CAP_SYS_MODULE)")


@pytest.mark.attempt("ptrace or read the memory of a process outside the sandbox")
def test_ptrace_outside(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess, blocked: Blocked
) -> None:
    assert server.proc is not None
    host_pids = [server.proc.pid, os.getpid(), 1]
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + f"""
import json
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = (ctypes.c_void_p * 2)(0x400000, 8)
results = {{}}
for pid in {host_pids}:
    if pid == 1:
        continue  # inside, PID 1 is the sandbox's own init
    results[f"attach {{pid}}"] = sc(101, 16, pid, 0, 0)[1]          # PTRACE_ATTACH
    results[f"seize {{pid}}"] = sc(101, 0x4206, pid, 0, 0)[1]       # PTRACE_SEIZE
    results[f"pidfd {{pid}}"] = sc(434, pid, 0)[1]                  # pidfd_open
    results[f"vm_readv {{pid}}"] = sc(310, pid, local, 1, remote, 1, 0)[1]
    results[f"kill {{pid}}"] = sc(62, pid, 0)[1]
init = open("/proc/1/cmdline").read().split("\\0")[0]
print(json.dumps({{"results": results, "init": init}}))
""",
    )
    assert seen["init"] in ("/.atoll/agent", "/.atoll/init")  # the OCI agent, gVisor's init
    if GVISOR:
        # the sentry has no pidfd_open at all; every other call finds no such process
        pidfds = {k: seen["results"].pop(k) for k in list(seen["results"]) if k.startswith("pidfd ")}
        assert set(pidfds.values()) == {"ENOSYS"}, seen
        assert set(seen["results"].values()) == {"ESRCH"}, seen
        blocked("ESRCH: host processes do not exist in the sentry; pidfd_open is ENOSYS")
        return
    assert set(seen["results"].values()) == {"ESRCH"}, seen
    blocked("ESRCH: host processes do not exist in the sandbox's pid namespace")


@pytest.mark.attempt("overwrite the runtime binary through /proc/PID/exe (CVE-2019-5736)")
def test_overwrite_runtime_binary(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    runtime = shutil.which(str(http.get("/v1/health").json()["runtime"]))
    assert runtime is not None
    with open(runtime, "rb") as f:
        before = hashlib.sha256(f.read()).hexdigest()
    # inside: open every other process's exe for writing, over and over, while execs come in
    attack = """
import os, time
end, hits = time.time() + 4, []
while time.time() < end:
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                os.close(os.open(f"/proc/{p}/exe", os.O_WRONLY)); hits.append(p)
            except OSError:
                pass
open("/tmp/exe-hits", "w").write(repr(hits))
"""
    put_file(http, pair[0], "/tmp/attack.py", attack.encode(), mode="644")
    api.run(http, pair[0], "nohup python3 /tmp/attack.py >/dev/null 2>&1 &")
    deadline = time.monotonic() + 4
    execs = 0
    while time.monotonic() < deadline:
        api.run(http, pair[0], "true")
        execs += 1
    time.sleep(1)
    assert api.run(http, pair[0], "sleep 1; cat /tmp/exe-hits")["stdout"] == "[]"
    with open(runtime, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == before
    blocked(f"{execs} execs raced, no exe opened for writing (the runtime's init is not dumpable)")


@pytest.mark.attempt("spoof packets with raw or packet sockets")
def test_raw_sockets(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        """
import json, socket
results = {}
for name, args in {"raw tcp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                   "raw ip": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
                   "raw icmp6": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
                   "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
                   "packet dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300)}.items():
    try:
        socket.socket(*args).close(); results[name] = "opened"
    except OSError as e:
        results[name] = e.strerror
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind(("10.0.0.1", 0)); results["bind foreign address"] = "bound"
except OSError as e:
    results["bind foreign address"] = e.strerror
print(json.dumps(results))
""",
    )
    bind = seen.pop("bind foreign address")
    assert set(seen.values()) == {"Operation not permitted"}, seen
    assert bind == "Cannot assign requested address"
    blocked("EPERM (no CAP_NET_RAW); a foreign source address cannot be bound")


@pytest.mark.attempt("talk to the hypervisor over AF_VSOCK (no network namespace applies)")
def test_vsock(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    # the socket is only opened, never connected: no packet leaves
    seen = py_json(
        http,
        pair[0],
        """
import json, socket
results = {}
for name, family in (("vsock", 40), ("alg", 38), ("tipc", 30), ("rds", 21), ("xdp", 44), ("bluetooth", 31)):
    try:
        socket.socket(family, socket.SOCK_SEQPACKET if name in ("alg",) else socket.SOCK_STREAM).close()
        results[name] = "opened"
    except OSError as e:
        results[name] = e.strerror
print(json.dumps(results))
""",
    )
    if GVISOR:
        # the sentry runs the same filter itself and answers every refusal with EPERM
        assert set(seen.values()) == {"Operation not permitted"}, seen
        blocked("EPERM: the sentry's seccomp allows only unix, inet, inet6, netlink and packet sockets")
        return
    assert set(seen.values()) == {"Address family not supported by protocol"}, seen
    blocked("EAFNOSUPPORT: seccomp allows only unix, inet, inet6, netlink and packet sockets")


@pytest.mark.attempt("bypass the socket filter from a 32-bit program (socketcall, int 0x80)")
def test_socket_filter_from_32_bit(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    put_file(http, pair[0], "/tmp/vsock-socketcall", elf32(VSOCK_VIA_SOCKETCALL))
    put_file(http, pair[0], "/tmp/vsock-socket32", elf32(VSOCK_VIA_SOCKET))
    out = api.run(http, pair[0], "/tmp/vsock-socketcall; echo $?; /tmp/vsock-socket32; echo $?")
    if GVISOR:
        # the sentry loads no 32-bit programs: neither gets to make a system call
        assert out["stdout"].split() == ["126", "126"], out
        assert out["stderr"].count("Exec format error") == 2, out
        blocked("gVisor refuses to execute 32-bit programs (ENOEXEC): no int 0x80 path exists")
        return
    assert out["stdout"].split() == ["38", "97"], out  # ENOSYS, EAFNOSUPPORT (253 would be an fd)
    blocked("socketcall ENOSYS (its arguments are invisible to seccomp); socket(2) filtered on i386 too")


@pytest.mark.attempt("change the host's clock")
def test_host_time(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    before = time.time()
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json, subprocess
date = subprocess.run(["date", "-s", "2001-01-01"], capture_output=True).returncode
ts = (ctypes.c_long * 2)(978307200, 0)
tv = (ctypes.c_long * 2)(978307200, 0)
print(json.dumps({"settimeofday": sc(164, tv, None)[1], "clock_settime": sc(227, 0, ts)[1],
                  "adjtimex": sc(159, ctypes.create_string_buffer(256))[1],
                  "clock_adjtime": sc(305, 0, ctypes.create_string_buffer(256))[1],
                  "date -s": date}))
""",
    )
    assert seen.pop("date -s") != 0
    assert set(seen.values()) == {"EPERM"}, seen
    assert abs(time.time() - before) < 60
    blocked("EPERM (seccomp; and no CAP_SYS_TIME)")


@pytest.mark.attempt("change the host's hostname or domain name")
def test_hostname(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    host = socket.gethostname()
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json, socket
print(json.dumps({"sethostname": sc(170, b"evil", 4)[1], "setdomainname": sc(171, b"evil", 4)[1],
                  "inside": socket.gethostname()}))
""",
    )
    assert (seen["sethostname"], seen["setdomainname"]) == ("EPERM", "EPERM")
    assert seen["inside"] == "sandbox" and socket.gethostname() == host
    blocked("EPERM (no CAP_SYS_ADMIN); the sandbox has its own UTS namespace anyway")


@pytest.mark.attempt("change host sysctls through /proc/sys and /sys")
def test_sysctls(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    targets = [
        "/proc/sys/kernel/sysrq",
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/fs/file-max",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/proc/sysrq-trigger",
    ]
    before = {t: _read(t) for t in targets}
    seen = py_json(
        http,
        pair[0],
        f"""
import json
results = {{}}
for path in {targets}:
    try:
        with open(path, "w") as f:
            f.write("|/tmp/x" if "core" in path else "0")
        results[path] = "written"
    except OSError as e:
        results[path] = e.strerror
print(json.dumps(results))
""",
    )
    assert {t: _read(t) for t in targets} == before  # the host's values are unchanged
    if GVISOR:
        # /proc/sys is the sentry's: ip_forward switches the sandbox's own user-space network
        # stack, which may be written; nothing else is
        written = [path for path, result in seen.items() if result == "written"]
        assert written in ([], ["/proc/sys/net/ipv4/ip_forward"]), seen
        blocked("the sentry's own /proc/sys (ip_forward is its network stack's); the host's values unchanged")
        return
    assert "written" not in seen.values(), seen
    blocked("read-only /proc/sys and /sys; /proc/sysrq-trigger masked")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None  # write-only (drop_caches, sysrq-trigger)


@pytest.mark.attempt("see or signal host processes")
def test_host_processes(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess, blocked: Blocked
) -> None:
    seen = py_json(
        http,
        pair[0],
        """
import json, os
pids = [p for p in os.listdir("/proc") if p.isdigit()]
cmdlines = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode() for p in pids]
print(json.dumps({"count": len(pids), "cmdlines": cmdlines}))
""",
    )
    assert seen["count"] < 12, seen
    assert not any("atoll" in c and "serve" in c for c in seen["cmdlines"])
    assert not any("pytest" in c for c in seen["cmdlines"])
    blocked(f"own pid namespace: {seen['count']} processes visible, none of the host's")


@pytest.mark.attempt(
    "use kernel-global interfaces (bpf, perf, keyrings, io_uring, userfaultfd, kexec, dmesg)"
)
def test_kernel_interfaces(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json
results = {
    "bpf": sc(321, 0, None, 0)[1], "perf_event_open": sc(298, None, 0, -1, -1, 0)[1],
    "keyctl": sc(250, 0, 0, 0, 0, 0)[1], "add_key": sc(248, b"user", b"x", b"y", 1, -2)[1],
    "io_uring_setup": sc(425, 1, None)[1], "userfaultfd": sc(323, 0)[1],
    "kexec_load": sc(246, 0, 0, None, 0)[1], "reboot": sc(169, 0xfee1dead, 672274793, 0x1234567, None)[1],
    "syslog": sc(103, 3, None, 0)[1], "acct": sc(163, None)[1], "swapon": sc(167, b"/x", 0)[1],
    "iopl": sc(172, 3)[1], "quotactl": sc(179, 0, None, 0, None)[1],
}
try:
    open("/proc/kmsg").read(1); results["/proc/kmsg"] = "read"
except OSError as e:
    results["/proc/kmsg"] = "EPERM" if e.errno == 1 else e.strerror
for path in ("/proc/kcore", "/proc/kallsyms", "/proc/timer_list", "/proc/keys"):
    try:
        results[path] = "readable" if open(path, "rb").read(64) else "empty"
    except OSError as e:
        results[path] = e.strerror
print(json.dumps(results))
""",
    )
    masked = {p: seen.pop(p) for p in ("/proc/kcore", "/proc/kallsyms", "/proc/timer_list", "/proc/keys")}
    assert "readable" not in masked.values(), masked
    if GVISOR:
        # syslog and dmesg read the sentry's own log, never the host's; there is no /proc/kmsg
        assert (seen.pop("syslog"), seen.pop("/proc/kmsg")) == ("OK", "No such file or directory"), seen
        assert set(seen.values()) == {"EPERM"}, seen
        log = api.run(http, pair[0], "dmesg")["stdout"]
        assert "Starting gVisor" in log and os.uname().release not in log, log
        blocked("EPERM (the sentry's seccomp); dmesg is the sentry's own log; masked /proc files")
        return
    # /proc/kmsg is root's 0400 file: root inside a user namespace is not its owner (EACCES)
    assert seen.pop("/proc/kmsg") in {"EPERM", "Permission denied"}, seen
    assert set(seen.values()) == {"EPERM"}, seen
    blocked("EPERM (seccomp; /proc/kmsg EACCES in a user namespace) and masked /proc files")


@pytest.mark.attempt("shield the sandbox from the OOM killer (oom_score_adj -1000)")
def test_oom_score_adj(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess, blocked: Blocked
) -> None:
    out = api.run(
        http, pair[0], "echo -1000 > /proc/self/oom_score_adj; echo $?; cat /proc/self/oom_score_adj"
    )
    rc, value = out["stdout"].split()
    if GVISOR:
        # the write lands in the sentry's bookkeeping; the host's OOM killer sees the sandbox's
        # host processes (sentry, gofer, stubs), whose scores stay as they were
        procs = api.cgroup_file(server.instance, pair[0], v1=("pids", "cgroup.procs"), v2="cgroup.procs")
        scores = {}
        for pid in procs.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                scores[pid] = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
        assert scores and min(scores.values()) >= 0, (out, scores)
        blocked(f"the sentry's own bookkeeping ({value} inside); host scores stay >= {min(scores.values())}")
        return
    assert rc != "0" and int(value) >= 0, out
    blocked(f"EACCES (no CAP_SYS_RESOURCE): oom_score_adj stays {value}")


@pytest.mark.attempt("hold a dangerous capability (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, ...)")
def test_capabilities(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    status = api.run(http, pair[0], "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status")
    fields = dict(line.split(":\t") for line in status["stdout"].strip().splitlines())
    dangerous = {
        "SYS_ADMIN": 21, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_PTRACE": 19, "SYS_MODULE": 16,
        "SYS_RAWIO": 17, "SYS_TIME": 25, "SYS_RESOURCE": 24, "MKNOD": 27, "DAC_READ_SEARCH": 2,
        "SETFCAP": 31, "SETPCAP": 8, "SYSLOG": 34, "BPF": 39, "PERFMON": 38, "SYS_BOOT": 22,
    }  # fmt: skip
    # the sentry's status has no CapAmb (ambient capabilities are not kept there) nor NoNewPrivs
    for field in ("CapEff", "CapBnd") if GVISOR else ("CapEff", "CapBnd", "CapAmb"):
        held = int(fields[field], 16)
        assert not [name for name, bit in dangerous.items() if held & (1 << bit)], field
    if GVISOR:  # PR_GET_NO_NEW_PRIVS instead
        no_new_privs = py_json(
            http, pair[0], SYSCALL + "import json\nprint(json.dumps(sc(157, 39, 0, 0, 0, 0)))"
        )
        fields["NoNewPrivs"] = str(no_new_privs[0])
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode
    blocked(f"not in the bounding set (CapBnd {fields['CapBnd'].strip()}); no_new_privs; seccomp filter")
