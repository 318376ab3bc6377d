"""Escape attempts on the host's files: every path a process inside a sandbox can name leads into
its own root, and nothing the host does on the sandbox's behalf follows a link out of it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import ServerProcess
from tests.security._inside import SYSCALL, py_json
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

SECRET = "host secret " + uuid.uuid4().hex


@pytest.fixture
def marker() -> Iterator[Path]:
    path = Path("/var/tmp") / f"atoll-host-marker-{uuid.uuid4().hex}"
    path.write_text(SECRET)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.attempt("read a host file through /proc/1/root and every /proc/PID/root")
def test_host_file_through_proc_root(
    http: httpx.Client, pair: tuple[str, str], marker: Path, server: ServerProcess, blocked: Blocked
) -> None:
    seen = py_json(
        http,
        pair[0],
        f"""
import json, os
found = []
for pid in ["self", "1"] + [p for p in os.listdir("/proc") if p.isdigit()]:
    for path in (f"/proc/{{pid}}/root{marker}", "{marker}", f"/proc/{{pid}}/root{server.data_dir}"):
        try:
            found.append([path, open(path).read()[:40] if os.path.isfile(path) else os.listdir(path)])
        except OSError:
            pass
print(json.dumps(found))
""",
    )
    assert seen == []
    blocked("not there: /proc/PID/root is the sandbox's own root (mount namespace)")


@pytest.mark.attempt("climb out of the root: chroot breakout, /proc/self/cwd and .. games")
def test_chroot_and_cwd_games(
    http: httpx.Client, pair: tuple[str, str], marker: Path, blocked: Blocked
) -> None:
    seen = py_json(
        http,
        pair[0],
        f"""
import json, os
def link(path):
    try:
        return os.readlink(path)
    except OSError as e:
        return e.strerror
os.makedirs("/tmp/jail/inner", exist_ok=True)
own_root = sorted(os.listdir("/"))
fd = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")            # CAP_SYS_CHROOT is held on purpose (package tools use it)
os.fchdir(fd)                     # the classic breakout: a directory outside the new root
for _ in range(64):
    os.chdir("..")
os.chroot(".")
found = []
for path in ("{marker}", "/proc/self/cwd/../../../../..{marker}", "/proc/self/root/../..{marker}",
             "/../../../../..{marker}"):
    if os.path.exists(path):
        found.append(path)
now = sorted(os.listdir("/"))
print(json.dumps({{"same_root": now == own_root, "empty_root": now == [], "found": found,
                   "cwd": link("/proc/self/cwd"), "root_link": link("/proc/self/root")}}))
""",
    )
    assert seen["found"] == [], seen
    if GVISOR:
        # climbing past the chroot ends in the sentry's empty root above the sandbox's, which
        # its procfs cannot even name (no cwd or root link): no host file is reachable
        assert seen["same_root"] or seen["empty_root"], seen
        assert seen["cwd"] in ("/", "No such file or directory"), seen
        assert seen["root_link"] in ("/", "No such file or directory"), seen
        blocked("the breakout reaches only an empty root inside the sentry (its own mount namespace)")
        return
    assert seen["same_root"], seen
    assert seen["cwd"] == "/" and seen["root_link"] == "/"
    blocked("the breakout reaches only the sandbox's own / (pivot_root, own mount namespace)")


@pytest.mark.attempt("exec with cwd /proc/self/fd/N (a runtime's leaked host fd, CVE-2024-21626)")
def test_exec_cwd_through_leaked_fd(
    http: httpx.Client, pair: tuple[str, str], marker: Path, blocked: Blocked
) -> None:
    answers = set()
    for fd in range(3, 12):
        r = http.post(
            f"/v1/sandbox/{pair[0]}/process/execute",
            json={
                "command": f"pwd; cat ../../../../../../..{marker} 2>&1; ls /proc/self/cwd/../../..",
                "cwd": f"/proc/self/fd/{fd}",
            },
        )
        answers.add(r.status_code)
        if r.status_code == 200:
            assert SECRET not in r.text, f"host file read through fd {fd}"
        else:
            assert r.status_code == 400, r.text
    blocked(f"answers {sorted(answers)}: the runtime refuses a cwd outside the container root")


@pytest.mark.attempt("make the host write a file through a link planted in the sandbox's disk")
def test_host_write_through_planted_link(
    http: httpx.Client, marker: Path, tmp_path: Path, blocked: Blocked
) -> None:
    # a transform policy makes the host install the sandbox's CA into its trust store on every boot
    policy = {
        "mode": "custom",
        "allow_domains": ["api.test.internal"],
        "transforms": [{"domain": "api.test.internal", "inject_headers": {"x-test": "1"}}],
    }
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    sid = api.create(http, network_policy=policy)["id"]
    try:
        bundle, local = "/etc/ssl/certs/ca-certificates.crt", "/usr/local/share/ca-certificates"
        plant = f"rm -rf {bundle} {local} && ln -s {marker} {bundle} && ln -s {host_dir} {local}"
        assert api.run(http, sid, plant)["exit_code"] == 0
        assert http.post(f"/v1/sandbox/{sid}/stop").status_code == 200
        r = http.post(f"/v1/sandbox/{sid}/start")
        assert r.status_code == 200, r.text  # the sandbox broke only its own trust store
        assert marker.read_text() == SECRET
        assert list(host_dir.iterdir()) == []
        inside = api.run(
            http,
            sid,
            f"test -L {bundle}; echo $?; grep -c BEGIN {bundle}",
        )
        assert inside["stdout"].split()[0] == "1"  # replaced by a regular file, not followed
    finally:
        http.delete(f"/v1/sandbox/{sid}/")
    blocked("the host resolves paths in the sandbox's layers inside them (openat2 RESOLVE_IN_ROOT)")


@pytest.mark.attempt("read the host disk through a device node (mknod, /dev)")
def test_device_nodes(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    host_root = os.stat("/")
    seen = py_json(
        http,
        pair[0],
        f"""
import json, os, stat
results = {{}}
disk = ({os.major(host_root.st_dev)}, {os.minor(host_root.st_dev)})
for name, mode, major, minor in (("disk", stat.S_IFBLK, *disk), ("mem", stat.S_IFCHR, 1, 1),
                                 ("kmsg", stat.S_IFCHR, 1, 11)):
    try:
        os.mknod(f"/tmp/{{name}}", mode | 0o600, os.makedev(major, minor)); results[name] = "created"
    except OSError as e:
        results[name] = e.strerror
blocks = [n for n in os.listdir("/dev") if stat.S_ISBLK(os.lstat(f"/dev/{{n}}").st_mode)]
print(json.dumps({{"mknod": results, "block_devices": blocks, "dev": sorted(os.listdir("/dev"))}}))
""",
    )
    assert set(seen["mknod"].values()) == {"Operation not permitted"}, seen
    assert seen["block_devices"] == []
    assert not {"mem", "kmem", "port", "kmsg", "vda", "sda", "vsock"} & set(seen["dev"])
    blocked("EPERM (no CAP_MKNOD; the device cgroup allows only null/zero/random/tty/pts)")


@pytest.mark.attempt("open a host inode by handle (open_by_handle_at, the 'shocker' exploit)")
def test_open_by_handle_at(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json, struct
# struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[8] }: ext4 inode 2, the root
handle = ctypes.create_string_buffer(struct.pack("<IiII", 8, 1, 2, 0))
results = {}
for source in ("/etc/hosts", "/", "/.atoll/init"):
    fd = os.open(source, os.O_RDONLY)
    results[source] = sc(304, fd, handle, os.O_RDONLY)[1]    # open_by_handle_at
mount_id = ctypes.c_int()
out = ctypes.create_string_buffer(128); struct.pack_into("<I", out, 0, 120)
results["name_to_handle_at"] = sc(303, -100, b"/etc/hosts", out, ctypes.byref(mount_id), 0)[1]
print(json.dumps(results))
""",
    )
    assert set(seen.values()) == {"EPERM"}, seen
    blocked("EPERM (seccomp; and no CAP_DAC_READ_SEARCH)")


@pytest.mark.attempt("mount a filesystem (tmpfs, bind of /, proc, cgroup, the new mount API)")
def test_mount(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        SYSCALL
        + """
import json
MS_BIND = 4096
results = {
    "tmpfs": sc(165, b"none", b"/mnt", b"tmpfs", 0, None)[1],
    "bind /": sc(165, b"/", b"/mnt", None, MS_BIND, None)[1],
    "proc": sc(165, b"proc", b"/mnt", b"proc", 0, None)[1],
    "cgroup": sc(165, b"cgroup", b"/mnt", b"cgroup", 0, b"memory")[1],
    "fsopen": sc(430, b"tmpfs", 0)[1],
    "open_tree": sc(428, -100, b"/", 1)[1],
    "move_mount": sc(429, -100, b"/proc", -100, b"/mnt", 0)[1],
    "umount /proc": sc(166, b"/proc", 2)[1],
    "pivot_root": sc(155, b"/tmp", b"/tmp")[1],
}
print(json.dumps(results))
""",
    )
    assert set(seen.values()) == {"EPERM"}, seen
    blocked("EPERM (seccomp; and no CAP_SYS_ADMIN)")


@pytest.mark.attempt("become root of the host through a setuid binary or file capabilities")
def test_setuid_escalation(http: httpx.Client, pair: tuple[str, str], blocked: Blocked) -> None:
    seen = py_json(
        http,
        pair[0],
        """
import json, os, shutil, subprocess
shutil.copy("/usr/bin/python3", "/tmp/suid-python"); os.chmod("/tmp/suid-python", 0o4755)
try:
    os.setxattr("/tmp/suid-python", "security.capability",
                bytes.fromhex("00000002" "ffffffff00000000" "ffffffff00000000"))  # v2: all permitted
    fcaps = "set"
except OSError as e:
    fcaps = e.strerror
def run_as_nobody(argv):
    code = ("import os, sys; os.setgroups([]); os.setgid(65534); os.setuid(65534); "
            "os.execv(sys.argv[1], sys.argv[1:])")
    done = subprocess.run(["python3", "-c", code, *argv], capture_output=True, text=True)
    return (done.stdout + done.stderr).strip()
print(json.dumps({
    "suid": run_as_nobody(["/tmp/suid-python", "-c", "import os; print(os.geteuid(), os.getuid())"]),
    "mount": run_as_nobody(["/usr/bin/mount", "-t", "tmpfs", "none", "/mnt"]),
    "fcaps": fcaps,
}))
""",
    )
    assert seen["suid"] == "65534 65534", seen
    assert "superuser" in seen["mount"] or "permission" in seen["mount"].lower(), seen
    if GVISOR:
        assert seen["fcaps"] == "Operation not supported", seen  # the sentry has no file capabilities
        blocked("no_new_privs: setuid bits are ignored; gVisor refuses file capabilities (EOPNOTSUPP)")
        return
    assert seen["fcaps"] == "Operation not permitted"
    blocked("no_new_privs: setuid bits are ignored; no CAP_SETFCAP for file capabilities")


# the layer helpers the host uses on a sandbox's files (the fix for the planted-link attempt)
def test_layer_helpers_never_follow_links_out(tmp_path: Path) -> None:
    from atoll.runtime import confined

    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("host")
    (layer / "etc" / "bundle").symlink_to(outside)
    (layer / "etc" / "dir").symlink_to(tmp_path)
    assert confined.read_in_layer(str(layer), "etc/bundle") is None  # resolved inside: no such file
    confined.replace_in_layer(str(layer), "etc/bundle", b"new")
    with pytest.raises(OSError):  # the link leads nowhere inside the layer
        confined.replace_in_layer(str(layer), "etc/dir/x.crt", b"new")
    assert outside.read_text() == "host"
    assert not (tmp_path / "x.crt").exists()
    assert (layer / "etc" / "bundle").read_bytes() == b"new"
    assert not (layer / "etc" / "bundle").is_symlink()


@pytest.mark.attempt("make the filesystem API read or write host files through planted links")
def test_filesystem_api_follows_links_inside_only(
    http: httpx.Client, pair: tuple[str, str], marker: Path, tmp_path: Path, blocked: Blocked
) -> None:
    plant = f"ln -sf {marker} /tmp/to-host; ln -sfn {tmp_path} /tmp/host-dir"
    plant += f"; ln -sf /proc/1/root{marker} /tmp/magic"
    assert api.run(http, pair[0], plant)["exit_code"] == 0
    base = f"/v1/sandbox/{pair[0]}/filesystem"
    answers = []
    for path in ("/tmp/to-host", "/tmp/magic", f"/tmp/host-dir/../../..{marker}"):
        r = http.post(f"{base}/read-file", params={"path": path})
        answers.append(r.status_code)
        assert SECRET not in r.text, path
    r = http.post(f"{base}/write-file", params={"path": "/tmp/host-dir/planted"}, content=b"x")
    answers.append(r.status_code)
    r = http.post(f"{base}/write-file", params={"path": "/tmp/to-host"}, content=b"overwritten")
    answers.append(r.status_code)
    assert marker.read_text() == SECRET
    assert list(tmp_path.iterdir()) == []
    blocked(f"answers {answers}: links resolve inside the sandbox root (openat2 RESOLVE_IN_ROOT)")
