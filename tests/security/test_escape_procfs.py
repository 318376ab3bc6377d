"""Escape attempts through /proc and /sys: reading what describes the host's kernel, memory and
disks (physical addresses, the kernel heap, its build, the host's loop devices), and the host's
own figures in ``free``. OCI sandboxes mask those files (``oci_config.MASKED_PATHS``) and see
their own limits through LXCFS (``atoll/runtime/lxcfs.py``); gVisor's sentry has its own /proc."""

from __future__ import annotations

import time

import httpx
import pytest

from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import ServerProcess
from tests.security._inside import py_json
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

HOST_FILES = [
    "/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup", "/proc/slabinfo", "/proc/vmallocinfo",
    "/proc/pagetypeinfo", "/proc/zoneinfo", "/proc/buddyinfo", "/proc/iomem", "/proc/ioports",
    "/proc/modules", "/proc/config.gz", "/proc/kallsyms", "/proc/kcore", "/proc/keys", "/proc/timer_list",
    "/proc/sched_debug", "/proc/interrupts", "/proc/kmsg", "/sys/kernel/vmcoreinfo", "/sys/kernel/notes",
]  # fmt: skip
HOST_DIRS = [
    "/proc/fs/ext4", "/proc/fs/jbd2", "/sys/fs/ext4", "/sys/firmware", "/sys/kernel/debug",
    "/sys/kernel/tracing", "/sys/block", "/sys/class/block", "/sys/dev/block",
]  # fmt: skip

READ_ALL = """
import json, os
files, dirs = {}, {}
for path in %r:
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
        files[path] = "%%d bytes" %% len(data) if data else "empty"
    except OSError as exc:
        files[path] = exc.__class__.__name__
for path in %r:
    try:
        found = []
        for root, subdirs, names in os.walk(path):
            found += [os.path.join(root, n) for n in names]
        dirs[path] = found[:5] if found else "empty"
    except OSError as exc:
        dirs[path] = exc.__class__.__name__
print(json.dumps({"files": files, "dirs": dirs}))
"""


@pytest.mark.attempt("read the host's kernel, memory and disk layout from /proc and /sys")
def test_host_kernel_files(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(http, pair[0], READ_ALL % (HOST_FILES, HOST_DIRS))
    leaked = {p: v for p, v in seen["files"].items() if v.endswith(" bytes")}
    assert not leaked, leaked
    leaked_dirs = {p: v for p, v in seen["dirs"].items() if isinstance(v, list)}
    assert not leaked_dirs, leaked_dirs
    # the attempt must have run as root against each path (a typo'd path would read as "absent")
    assert set(seen["files"]) == set(HOST_FILES)
    if GVISOR:
        blocked("the sentry's own /proc and /sys: none of these describe the host")
    else:
        blocked("masked: empty /dev/null binds over files, empty read-only tmpfs over directories")


@pytest.mark.attempt("learn the host's paths (data dir, layers, disks) from /proc/self/mountinfo")
def test_mountinfo_names_no_host_path(
    http: httpx.Client, pair: tuple[str, str], server: ServerProcess, blocked: Blocked
) -> None:
    out = api.run(http, pair[0], "cat /proc/self/mountinfo /proc/self/mounts")
    assert out["exit_code"] == 0, out
    text = out["stdout"]
    assert " / / " in text or " / " in text, text  # it did read the mount table
    for secret in (str(server.data_dir), "/var/lib/atoll", "/var/tmp", server.instance):
        leaking = [line for line in text.splitlines() if secret in line]
        assert not leaking, (secret, leaking)
    if GVISOR:
        blocked("the sentry's own mount table names no host path")
    else:
        blocked("overlay layers named by relative links (layers/N); binds show paths in their own filesystem")


@pytest.mark.attempt("learn the host's memory and uptime from free, /proc/meminfo and /proc/uptime")
def test_free_shows_the_sandbox(http: httpx.Client, blocked: Blocked) -> None:
    sid = api.create(http, memory=512)["id"]
    try:
        out = api.run(http, sid, "free -m | awk '/^Mem:/ {print $2}'; cut -d' ' -f1 /proc/uptime")
        total_mib, uptime_s = out["stdout"].split()
        assert 480 <= int(total_mib) <= 530, out  # about 512, whatever the host has
        with open("/proc/uptime") as f:
            host_uptime_s = float(f.read().split()[0])
        # the sandbox's uptime is its own (seconds), not the host's (unless the host just booted)
        assert float(uptime_s) < 120 or host_uptime_s < 120, (uptime_s, host_uptime_s)
    finally:
        api.delete(http, sid)
    if GVISOR:
        blocked("the sentry's /proc/meminfo reports the sandbox's memory")
    else:
        blocked("LXCFS: /proc/meminfo, cpuinfo, stat, uptime as the sandbox's cgroup sees them")


def test_lxcfs_files_survive_checkpoint_and_restore(http: httpx.Client) -> None:
    """CRIU dumps a sandbox whose /proc files are binds of LXCFS's FUSE mount, and one of its
    processes holding /proc/meminfo open; after the restore both still show the sandbox's limit."""
    sid = api.create(http, memory=512)["id"]
    try:
        holder = (
            "nohup python3 -c \"import time; f = open('/proc/meminfo'); time.sleep(3600)\" "
            ">/dev/null 2>&1 & echo started"
        )
        assert api.run(http, sid, holder)["stdout"].strip() == "started"
        time.sleep(0.5)
        paused = http.post(f"/v1/sandbox/{sid}/pause")
        assert paused.status_code == 201, paused.text
        # the exec resumes it (a restore from the checkpoint, where the runtime can)
        out = api.run(http, sid, "free -m | awk '/^Mem:/ {print $2}'; pgrep -fc 'time[.]sleep' || true")
        total_mib, holders = out["stdout"].split()
        assert 480 <= int(total_mib) <= 530, out
        assert holders == "1", out  # the process with /proc/meminfo open came back
    finally:
        api.delete(http, sid)
