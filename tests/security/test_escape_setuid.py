"""A setuid-root file planted inside a sandbox, run by an unprivileged user on the host.

Root inside a sandbox is uid 0 on the host, so a file it makes setuid-root is a setuid-root file
on the host's filesystem. The host keeps it harmless twice over: every directory above sandbox
content is 0700 root (no host user reaches it by path), and every host-side place it lives in
ignores the bit anyway (the root overlay and the sandbox's disk are mounted ``nosuid``; a
snapshot's stored copy has it cleared). The test checks both: ``nobody`` walks every path the
server keeps the file at, then runs each copy through a descriptor root opened for it (which
skips the directory permissions, so only ``nosuid`` or the cleared bit stands in the way)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess, spare_server
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

PLANTED = "usr/local/bin/atoll-suid-id"
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def planted(http: httpx.Client) -> Iterator[str]:
    with planted_in(http) as sid:
        yield sid


@contextlib.contextmanager
def planted_in(http: httpx.Client) -> Iterator[str]:
    """A sandbox with a setuid-root copy of ``id`` in its root filesystem (as root inside)."""
    sid = api.create(http)["id"]
    try:
        r = api.run(http, sid, f"cp /usr/bin/id /{PLANTED} && chmod 4755 /{PLANTED} && ls -ln /{PLANTED}")
        assert r["exit_code"] == 0 and r["stdout"].startswith("-rwsr-xr-x 1 0 0"), r
        yield sid
    finally:
        http.delete(f"/v1/sandbox/{sid}/")


def as_nobody(*argv: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid/gid 65534. Through a shell: setpriv execs its command with root's
    capabilities still in effect (so the path walk of that exec ignores directory modes); the
    shell it starts has none left, and its exec is what an unprivileged user's would be."""
    shell = ["/bin/sh", "-c", 'exec "$@"', "sh"]
    return subprocess.run(
        [*NOBODY, *shell, *argv], capture_output=True, text=True, timeout=30, pass_fds=pass_fds
    )


def mapped_roots(pids: list[str]) -> set[int]:
    """The host uids root inside may be: 0, and the first host uid of each sandbox's user
    namespace (``/proc/<pid>/uid_map``'s ``0 <host> <size>``)."""
    roots = {0}
    for pid in pids:
        with contextlib.suppress(OSError):
            inside, host, _size = Path(f"/proc/{pid}/uid_map").read_text().split()[:3]
            if inside == "0":
                roots.add(int(host))
    return roots


def sandbox_pids(instance: str, sid: str) -> list[str]:
    found = []
    for runtime in ("runc", "crun"):
        pid_file = Path("/run/atoll") / instance / runtime / f"{sid}.init.pid"
        if pid_file.exists():
            found.append(pid_file.read_text().strip())
    return found


def check_copies(paths: list[Path], roots: Collection[int] = (0,)) -> list[str]:
    """Each host path of the planted file: ``nobody`` cannot reach it, and running it through a
    descriptor gives no privilege. Returns what was seen, for the report."""
    seen = []
    for path in paths:
        info = path.stat()  # as root: the test looks at the right file
        # root inside is uid 0 on the host, or (user namespaces) the unprivileged host uid its
        # range starts at; either way euid must stay 65534 below
        assert stat.S_ISREG(info.st_mode) and info.st_uid in roots, (path, info.st_uid, roots)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            by_fd = as_nobody(f"/proc/self/fd/{fd}", "-u", pass_fds=(fd,))
        finally:
            os.close(fd)
        harmless = bool(os.statvfs(path).f_flag & os.ST_NOSUID) or not info.st_mode & stat.S_ISUID
        if by_fd.returncode == 126 and "Text file busy" in by_fd.stderr:
            # gVisor holds the files a sandbox wrote open for writing: nothing can run them now,
            # and the bit means nothing where they are
            assert harmless, path
        else:
            assert by_fd.returncode == 0, (path, by_fd)
            assert by_fd.stdout.strip() == "65534", (path, by_fd.stdout)  # euid, not 0
        by_path = as_nobody(str(path), "-u")
        assert by_path.returncode != 0 and "Permission denied" in by_path.stderr, (path, by_path)
        setuid = "setuid bit kept" if info.st_mode & stat.S_ISUID else "setuid bit cleared"
        seen.append(f"{path.name}: {setuid}, euid {by_fd.stdout.strip()}")
    return seen


@pytest.mark.attempt("plant a setuid-root binary, run it as an unprivileged host user")
def test_planted_setuid_binary(
    http: httpx.Client, server: ServerProcess, planted: str, blocked: Blocked
) -> None:
    sandbox_dir = server.data_dir / "sandboxes" / planted
    paths = [sandbox_dir / "rootfs" / PLANTED, sandbox_dir / "disk" / "upper" / PLANTED]
    pids = sandbox_pids(server.instance, planted)
    for pid in pids:  # the container's own root: a bind of the overlay, nosuid too
        paths.append(Path(f"/proc/{pid}/root") / PLANTED)
    for directory in (server.data_dir, server.data_dir / "sandboxes", Path("/run/atoll") / server.instance):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    check_copies(paths, mapped_roots(pids))
    blocked("data dir 0700 root (nobody: EACCES); root overlay and disk mounted nosuid (euid stays 65534)")


@pytest.mark.attempt("plant a setuid-root binary where sandboxes have no disk quota, run it on the host")
def test_planted_setuid_binary_without_disk_quota(blocked: Blocked) -> None:
    """``--no-disk-quota`` keeps the upper dir on the host's filesystem: bound on itself nosuid."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-noquota-", dir="/var/tmp"))
    spare = spare_server(data_dir, "--no-disk-quota", "--disk-pool-size", "0", tag="q")
    try:
        spare.start()
        with httpx.Client(base_url=spare.base_url, headers=spare.headers, timeout=120) as h:
            with planted_in(h) as sid:
                sandbox_dir = data_dir / "sandboxes" / sid
                assert not (sandbox_dir / "disk.img").exists()
                roots = mapped_roots(sandbox_pids(spare.instance, sid))
                upper = sandbox_dir / "disk" / "upper" / PLANTED
                check_copies([sandbox_dir / "rootfs" / PLANTED, upper], roots)
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(data_dir / "sandboxes") + "/" not in mounts  # the bind went with the sandbox
    finally:
        spare.delete_everything()
        spare.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    blocked("the plain upper dir is bind-mounted nosuid,nodev (euid stays 65534); data dir 0700")


@pytest.mark.attempt("plant a setuid-root binary, snapshot, run the stored copy as a host user")
def test_planted_setuid_binary_in_a_snapshot(
    http: httpx.Client, server: ServerProcess, planted: str, blocked: Blocked
) -> None:
    if not http.get("/v1/health").json()["checkpoint"]:
        pytest.skip("snapshots need a checkpointing runtime on this host")
    r = http.post(f"/v1/sandbox/{planted}/snapshot/create", json={"name": f"suid-{planted[:8]}"})
    assert r.status_code == 201, r.text
    snapshot = r.json()["id"]
    try:
        stored = server.data_dir / "snapshots" / snapshot / "upper" / PLANTED
        assert stat.S_IMODE((server.data_dir / "snapshots").stat().st_mode) == 0o700
        check_copies([stored])
        assert not stored.stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    finally:
        http.delete(f"/v1/snapshot/{snapshot}")
    blocked("snapshot store 0700 root; the stored copy's setuid/setgid bits are cleared")
