"""Attempts to exhaust the host from inside a sandbox: processes, memory, disk blocks and inodes,
open files, and the kernel tables sandboxes share with the host (inotify, PTYs). Each stays
inside the sandbox's own limits, and the host (and the other sandboxes) keep working."""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from atoll.runtime import oci_config
from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import DISK_MIB, PIDS_LIMIT, ServerProcess
from tests.security._inside import py_json
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]
MIB = 1024 * 1024


def cgroup(server: ServerProcess, sid: str, *, v1: tuple[str, str], v2: str) -> str:
    return api.cgroup_file(server.instance, sid, v1=v1, v2=v2).read_text()


@pytest.mark.attempt("fork bomb")
def test_fork_bomb(
    http: httpx.Client, server: ServerProcess, pair: tuple[str, str], victim: str, blocked: Blocked
) -> None:
    bomb = api.run(http, victim, "f() { f | f & }; f; sleep 300", timeout=6)
    assert bomb["exit_code"] == 124, bomb  # the timeout ends the bomb's whole session
    if GVISOR:
        # the sentry refuses forks past RLIMIT_NPROC (the pids cgroup leaves room for the
        # sentry's own threads): the bomb never gets to the host's limit
        assert "Cannot fork" in bomb["stderr"], bomb
        events = cgroup(server, victim, v1=("pids", "pids.events"), v2="pids.events")
        assert int(events.split()[1]) == 0, events
        limit = api.run(http, victim, "grep 'Max processes' /proc/self/limits", timeout=30)
        assert limit["stdout"].split()[2:4] == [str(PIDS_LIMIT)] * 2, limit  # and it still runs commands
        assert api.run(http, pair[0], "echo alive", timeout=30)["stdout"] == "alive\n"  # the neighbour
        blocked(f"RLIMIT_NPROC ({PIDS_LIMIT}) in the sentry; the exec timeout kills the whole session")
        return
    events = cgroup(server, victim, v1=("pids", "pids.events"), v2="pids.events")
    assert int(events.split()[1]) > 0, events  # the limit was hit
    assert int(cgroup(server, victim, v1=("pids", "pids.current"), v2="pids.current")) <= PIDS_LIMIT
    # the sandbox answers again (a command in the moment the last members are reaped may get
    # 503 + Retry-After, never a wrong answer)
    for _ in range(60):
        r = http.post(f"/v1/sandbox/{victim}/process/execute", json={"command": "echo alive", "timeout": 30})
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200 and r.json()["stdout"] == "alive\n", r.text
    blocked(f"the pids cgroup ({PIDS_LIMIT}); the exec timeout kills the whole session")


@pytest.mark.attempt("memory balloon")
def test_memory_balloon(
    http: httpx.Client, server: ServerProcess, pair: tuple[str, str], blocked: Blocked
) -> None:
    sid = api.create(http, memory=512)["id"]
    try:
        hog = api.run(http, sid, "python3 -c 'b = bytearray(900 * 1024 * 1024); print(len(b))'", timeout=60)
        assert hog["exit_code"] == 137  # SIGKILL from the OOM killer of the sandbox's cgroup
        assert hog["stdout"] == ""
        limit = cgroup(server, sid, v1=("memory", "memory.limit_in_bytes"), v2="memory.max")
        assert int(limit) == 512 * MIB
        if GVISOR:
            # the sentry has no OOM killer of its own (google/gvisor#2533): the cgroup's ends the
            # sentry, i.e. the whole sandbox, and nothing beyond it
            after = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo still here"})
            # a clear conflict, not a server error: the sandbox's runtime is gone
            assert after.status_code == 409 and "no longer running" in after.json()["message"], after.text
            assert api.run(http, pair[0], "echo alive")["stdout"] == "alive\n"  # the neighbour
            assert http.get("/v1/health").status_code == 200  # and the host's control plane
        else:
            assert api.run(http, sid, "echo still here")["stdout"] == "still here\n"
    finally:
        api.delete(http, sid)
    if GVISOR:
        blocked("the sandbox's memory cgroup: the host's OOM killer ends that sandbox's sentry only")
        return
    blocked("the sandbox's memory cgroup: its own OOM killer ends the hog (exit 137)")


def host_free(server: ServerProcess) -> tuple[int, int]:
    st = os.statvfs(server.data_dir)
    return st.f_bavail * st.f_frsize, st.f_favail


@pytest.mark.attempt("fill the host's disk through the sandbox's root filesystem")
def test_disk_fill(http: httpx.Client, server: ServerProcess, victim: str, blocked: Blocked) -> None:
    free_before, _ = host_free(server)
    fill = api.run(
        http,
        victim,
        "dd if=/dev/zero of=/root/fill bs=1M count=100000 2>&1; stat -c %s /root/fill",
        timeout=300,
    )
    assert "No space left on device" in fill["stdout"] + fill["stderr"], fill
    written = int(fill["stdout"].split()[-1])
    assert written <= DISK_MIB * MIB
    free_during, _ = host_free(server)
    assert free_before - free_during < (DISK_MIB + 64) * MIB
    image = server.data_dir / "sandboxes" / victim / "disk.img"
    assert os.stat(image).st_blocks * 512 <= (DISK_MIB + 8) * MIB
    after = api.run(http, victim, "rm /root/fill && echo ok > /root/small && cat /root/small")
    assert after["stdout"] == "ok\n"
    blocked(f"ENOSPC at {written // MIB} MiB: the sandbox's own {DISK_MIB} MiB filesystem is full")


@pytest.mark.attempt("fill the host's disk through the bind-mounted /etc files")
def test_etc_fill(http: httpx.Client, server: ServerProcess, victim: str, blocked: Blocked) -> None:
    free_before, _ = host_free(server)
    fill = api.run(
        http, victim, "cat /dev/zero >> /etc/hosts; echo rc=$?; stat -c %s /etc/hosts", timeout=300
    )
    assert "No space left on device" in fill["stderr"], fill
    assert int(fill["stdout"].split()[-1]) <= DISK_MIB * MIB
    assert free_before - host_free(server)[0] < (DISK_MIB + 64) * MIB
    blocked("ENOSPC: /etc/hosts, hostname and resolv.conf live on the sandbox's own filesystem")


@pytest.mark.attempt("exhaust the host's inodes")
def test_inode_exhaustion(http: httpx.Client, server: ServerProcess, victim: str, blocked: Blocked) -> None:
    _, inodes_before = host_free(server)
    seen = py_json(
        http,
        victim,
        """
import json, os
os.makedirs("/root/many", exist_ok=True)
n, error = 0, ""
try:
    while n < 5_000_000:
        os.close(os.open(f"/root/many/{n}", os.O_CREAT | os.O_WRONLY, 0o600)); n += 1
except OSError as e:
    error = e.strerror
st = os.statvfs("/")
print(json.dumps({"created": n, "error": error, "total": st.f_files}))
""",
        timeout=300,
    )
    assert seen["error"] == "No space left on device", seen
    assert seen["created"] <= seen["total"] < 1_000_000
    assert inodes_before - host_free(server)[1] < 1000
    api.run(http, victim, "rm -rf /root/many", timeout=300)
    blocked(f"ENOSPC after {seen['created']} files: the sandbox's filesystem has its own inode table")


@pytest.mark.attempt("exhaust the host's open-file table (many processes x many files)")
def test_open_files(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    seen = py_json(
        http,
        victim,
        """
import json, os, resource, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 16, hard * 16)); raised = "raised"
except (ValueError, OSError) as e:
    raised = str(e)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
children, total = [], 0
for _ in range(8):                      # 8 processes, each as many files as it may hold
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.write(w, str(len(fds)).encode()); time.sleep(15); os._exit(0)
    os.close(w); total += int(os.read(r, 32)); children.append(pid)
open("/tmp/holding", "w").write(str(total))
print(json.dumps({"hard": hard, "raised": raised, "total": total}))
time.sleep(10)
""",
        timeout=120,
    )
    assert seen["raised"] != "raised"
    assert seen["hard"] <= oci_config.MAX_OPEN_FILES
    # the host's table is no longer a shared pool a sandbox can fill: open files are charged to
    # memory cgroups, and the table holds more files than this host's memory could back
    with open("/proc/sys/fs/file-max") as f:
        file_max = int(f.read())
    assert file_max * 256 > os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # an unprivileged host process (not exempt from the table's limit, unlike root) still opens files
    done = subprocess.run(
        [sys.executable, "-c", "import os; os.setgid(65534); os.setuid(65534); open('/etc/hostname').read()"],
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    blocked(
        f"{seen['total']} files held by 8 processes (hard limit {seen['hard']} each, not raisable); "
        "the host's fs.file-max is raised so memory cgroups bound each sandbox"
    )


def _inotify_init() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.inotify_init1(os.O_CLOEXEC))


@pytest.mark.attempt("exhaust inotify instances shared by every uid-0 process of the host")
def test_inotify_exhaustion(http: httpx.Client, pair: tuple[str, str], victim: str, blocked: Blocked) -> None:
    seen = py_json(
        http,
        victim,
        """
import ctypes, json, os, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 512:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
if os.fork() == 0:
    time.sleep(8); os._exit(0)     # hold them (the child inherits every fd)
print(json.dumps({"held": len(fds), "errno": ctypes.get_errno()}))
""",
    )
    host_fd = _inotify_init()
    other = api.run(
        http, pair[0], "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0) >= 0)'"
    )["stdout"]
    assert host_fd >= 0, "the host's root lost inotify while a sandbox held instances"
    os.close(host_fd)
    assert other == "True\n"
    assert seen["held"] == 512  # more than the kernel's default of 128 for all uid-0 processes together
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        limit = int(f.read())
    blocked(f"the shared per-uid pool is raised to {limit}; instances are charged to memory cgroups")


@pytest.mark.attempt("exhaust the host's pseudo-terminals")
def test_pty_exhaustion(http: httpx.Client, pair: tuple[str, str], victim: str, blocked: Blocked) -> None:
    host_ptys = int(open("/proc/sys/kernel/pty/nr").read())
    seen = py_json(
        http,
        victim,
        """
import json, os, time
fds = []
error = ""
while len(fds) < 5000:
    try:
        fds.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
    except OSError as e:
        error = e.strerror; break
if os.fork() == 0:
    time.sleep(8); os._exit(0)
print(json.dumps({"held": len(fds), "error": error}))
""",
        timeout=120,
    )
    # the sandbox's child still holds them for a few seconds
    host_ptys_held = int(open("/proc/sys/kernel/pty/nr").read()) - host_ptys
    master, slave = os.openpty()  # the host still gets one ...
    os.close(master)
    os.close(slave)
    other = api.run(http, pair[0], "python3 -c 'import os; os.openpty(); print(1)'")["stdout"]
    assert other == "1\n"  # ... and so does another sandbox
    if GVISOR:
        # the sentry's terminals are its own (its devpts ignores max=): none is the host's
        assert seen["held"] > 0 and host_ptys_held < seen["held"], (seen, host_ptys_held)
        blocked(f"{seen['held']} terminals held, all the sentry's own (host count moved {host_ptys_held})")
        return
    assert seen["held"] <= oci_config.MAX_PTYS and seen["error"], seen
    blocked(f"the sandbox's own devpts stops it at {seen['held']} ({seen['error']})")


def test_host_tables_are_raised() -> None:
    """The server raised the shared tables at start-up (``atoll.runtime.hostlimits``)."""
    from atoll.runtime.hostlimits import SHARED_TABLES

    for name, target in SHARED_TABLES.items():
        with open(f"/proc/sys/{name}") as f:
            assert int(f.read().split()[0]) >= target, name
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] > 0
    assert shutil.which("mkfs.ext4"), "disk quotas need e2fsprogs"
