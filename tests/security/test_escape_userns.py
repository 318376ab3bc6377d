"""User namespaces (``--userns``): root inside an OCI sandbox is an unprivileged uid outside.

A server of its own with user namespaces on (whatever the default), so these run on any host
where the OCI backends do. Escape attempts first, then the features that must keep working with
them: exec, the filesystem API, terminals, pause (CRIU checkpoint) and snapshot forks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests._support import api
from tests._support.server import ServerProcess, serving, side_server, spare_server
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged]

BASE = 0x7000_0000  # this test server's ranges: far from any other server's default
RANGE = 65536
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture(scope="module")
def userns_server() -> Iterator[ServerProcess]:
    if os.environ.get("ATOLL_TEST_RUNTIME") == "runsc":
        pytest.skip("user namespaces are for the OCI backends (gVisor maps ids in its own kernel)")
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-userns-", dir="/var/tmp"))
    server = spare_server(
        data_dir,
        "--userns",
        "--userns-base",
        str(BASE),
        "--warm-pool-size",
        "0",
        "--runtime",
        "runc",
        tag="u",
    )
    try:
        server.start()
        yield server
    finally:
        server.delete_everything()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def uhttp(userns_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=userns_server.base_url, headers=userns_server.headers, timeout=120) as client:
        yield client


@pytest.fixture
def sandbox(uhttp: httpx.Client) -> Iterator[str]:
    sid = api.create(uhttp)["id"]
    try:
        yield sid
    finally:
        uhttp.delete(f"/v1/sandbox/{sid}/")


def init_pid(server: ServerProcess, sid: str) -> int:
    return int((Path("/run/atoll") / server.instance / "runc" / f"{sid}.init.pid").read_text())


def host_uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a host process, as the host sees them."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def mapped_base(uhttp: httpx.Client, sid: str) -> int:
    r = api.run(uhttp, sid, "cat /proc/self/uid_map")
    inside, outside, size = (int(x) for x in r["stdout"].split())
    assert (inside, size) == (0, RANGE), r
    return outside


def test_health_says_user_namespaces_are_on(uhttp: httpx.Client, server: ServerProcess) -> None:
    assert uhttp.get("/v1/health").json()["userns"] is True
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as default:
        assert isinstance(default.get("/v1/health").json()["userns"], bool)


def test_on_by_default(http: httpx.Client, server: ServerProcess) -> None:
    """The session's server runs with the defaults: its OCI sandboxes are in user namespaces
    (``--no-userns``, ``ATOLL_USERNS=0``, turns them off; gVisor maps ids in its own kernel)."""
    if os.environ.get("ATOLL_USERNS", "").lower() in ("0", "false", "f", "n", "no", "off"):
        pytest.skip("this run turned user namespaces off (ATOLL_USERNS)")
    health = http.get("/v1/health").json()
    if health["runtime"] == "runsc":
        assert health["userns"] is False  # the sentry's own kernel maps ids (docs/security.md)
        return
    assert health["userns"] is True, health
    sid = api.create(http)["id"]
    try:
        inside, outside, size = api.run(http, sid, "cat /proc/self/uid_map")["stdout"].split()
        assert (inside, size) == ("0", str(RANGE)) and int(outside) >= RANGE, (inside, outside, size)
    finally:
        api.delete(http, sid)


@pytest.mark.attempt("root inside a sandbox is root on the host (user namespaces on)")
def test_root_inside_is_an_unprivileged_uid_outside(
    uhttp: httpx.Client, userns_server: ServerProcess, sandbox: str, blocked: Blocked
) -> None:
    base = mapped_base(uhttp, sandbox)
    assert base >= BASE and (base - BASE) % RANGE == 0  # not the identity map
    r = api.run(uhttp, sandbox, "id -u; sleep 30 & echo $!")
    assert r["stdout"].split()[0] == "0"  # still root inside
    pid = init_pid(userns_server, sandbox)
    assert host_uids(pid) == [base] * 4
    procs = api.cgroup_file(userns_server.instance, sandbox, v1=("pids", "cgroup.procs"), v2="cgroup.procs")
    for member in procs.read_text().split():
        assert all(base <= uid < base + RANGE for uid in host_uids(int(member))), member
    # the host's root has no identity inside: its files show as the overflow uid (nobody)
    r = api.run(uhttp, sandbox, "stat -c %u /proc/sys/kernel/hostname /sys/kernel/mm")
    assert r["stdout"].split() == ["65534", "65534"], r
    blocked(f"user namespace: root inside is host uid {base}, the host's root is unmapped")


def claimed_ranges() -> dict[str, int]:
    """holder (a network slot's netns name) -> first host id of its range, from the host-wide
    claims."""
    from atoll.runtime.userns import CLAIMS_DIR

    claims = {}
    for claim in CLAIMS_DIR.iterdir():
        try:
            owner_and_holder = claim.read_text().split("\n")
        except FileNotFoundError:  # released meanwhile
            continue
        # a claim is created, then written: another server's may be caught empty in between
        if len(owner_and_holder) >= 2:
            claims[owner_and_holder[1]] = int(claim.name)
    return claims


def slot_of(server: ServerProcess, sid: str) -> str:
    """The network slot whose namespaces the sandbox joined (its netns name)."""
    return Path((Path("/run/atoll") / server.instance / "runc" / f"{sid}.slot").read_text()).name


def test_ranges_do_not_overlap_and_are_released(uhttp: httpx.Client, userns_server: ServerProcess) -> None:
    from atoll.runtime import userns_slot

    ids = [api.create(uhttp)["id"] for _ in range(2)]
    try:
        bases = [mapped_base(uhttp, sid) for sid in ids]
        assert abs(bases[0] - bases[1]) >= RANGE
        claimed = claimed_ranges()  # host-wide: every server's claims in one directory
        assert {claimed[slot_of(userns_server, sid)] for sid in ids} == set(bases), claimed
    finally:
        for sid in ids:
            api.delete(uhttp, sid)
    # released with the slots (torn down with their sandboxes): each claim of this server names
    # a slot that exists, ready in the pool
    prefix = f"atoll-{userns_server.instance}-"
    mine = [holder for holder in claimed_ranges() if holder.startswith(prefix)]
    assert mine and all(userns_slot.exists(holder) for holder in mine), mine
    assert not (Path("/run/atoll") / userns_server.instance / "runc" / f"{ids[0]}.slot").exists()
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if ids[0] in line]


def test_sandbox_joins_its_slots_namespaces_nothing_moved(
    uhttp: httpx.Client, userns_server: ServerProcess, sandbox: str
) -> None:
    """The network pool makes each slot's user namespace with its network namespace inside it
    (``userns_slot``); a sandbox joins both by path: no interface moved, no hook."""
    from atoll.runtime import userns_slot

    slot = slot_of(userns_server, sandbox)
    pid = init_pid(userns_server, sandbox)
    assert os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat(userns_slot.userns_path(slot)).st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(Path("/run/netns") / slot).st_ino
    assert claimed_ranges()[slot] == mapped_base(uhttp, sandbox)
    state = Path("/run/atoll") / userns_server.instance / "runc"
    assert not (state / f"{sandbox}.net.json").exists()  # no prestart hook moved eth0 in
    r = api.run(uhttp, sandbox, "cat /sys/class/net/eth0/operstate; ls /sys/class/net")
    assert r["stdout"].split() == ["up", "eth0", "lo"], r


@pytest.mark.attempt("plant a setuid-root binary, run it as an unprivileged host user (user namespaces on)")
def test_planted_setuid_binary_stays_unprivileged(
    uhttp: httpx.Client, userns_server: ServerProcess, sandbox: str, blocked: Blocked
) -> None:
    planted = "usr/local/bin/atoll-suid-id"
    r = api.run(uhttp, sandbox, f"cp /usr/bin/id /{planted} && chmod 4755 /{planted} && ls -ln /{planted}")
    assert r["exit_code"] == 0 and r["stdout"].startswith("-rwsr-xr-x 1 0 0"), r
    base = mapped_base(uhttp, sandbox)
    # as the host sees it through the sandbox's root: owned by the mapped root, not by root
    seen = Path(f"/proc/{init_pid(userns_server, sandbox)}/root") / planted
    info = seen.stat()
    assert info.st_uid == base and info.st_mode & stat.S_ISUID
    fd = os.open(seen, os.O_RDONLY | os.O_CLOEXEC)
    try:
        shell = ["/bin/sh", "-c", 'exec "$@"', "sh"]
        done = subprocess.run(
            [*NOBODY, *shell, f"/proc/self/fd/{fd}", "-u"],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done
    assert done.stdout.strip() != "0"  # nosuid (65534), and at worst the unprivileged base
    blocked("the file belongs to the sandbox's mapped root (an unprivileged uid); mounts nosuid")


@pytest.mark.attempt("unshare -U inside a sandbox to regain capabilities on the host")
def test_unshare_user_namespace_gains_nothing(uhttp: httpx.Client, sandbox: str, blocked: Blocked) -> None:
    r = api.run(
        uhttp, sandbox, "unshare -Ur sh -c 'cat /proc/self/uid_map; mount -t tmpfs x /mnt && echo MOUNTED'"
    )
    assert "MOUNTED" not in r["stdout"], r
    assert r["exit_code"] != 0, r
    # and no capability over what the host's root owns, from the sandbox's own namespace
    r = api.run(uhttp, sandbox, "echo x > /proc/sys/kernel/hostname; echo rc=$?")
    assert "rc=0" not in r["stdout"], r
    blocked("seccomp refuses unshare/clone(CLONE_NEWUSER); the sandbox's root holds no host capability")


# what must keep working -----------------------------------------------------------------------
def test_exec_network_and_files_created_by_the_api_belong_to_the_mapped_root(
    uhttp: httpx.Client, sandbox: str
) -> None:
    r = api.run(uhttp, sandbox, "cat /sys/class/net/eth0/operstate; awk 'NR > 1 {print $2}' /proc/net/route")
    assert r["stdout"].split()[:2] == ["up", "00000000"], r  # the pool's interface, with its default route
    resp = uhttp.post(
        f"/v1/sandbox/{sandbox}/filesystem/write-file",
        params={"path": "/root/from-api.txt"},
        content=b"hello\n",
    )
    assert resp.status_code == 204, resp.text
    resp = uhttp.post(
        f"/v1/sandbox/{sandbox}/filesystem/mkdir", json={"path": "/srv/made/by/api", "recursive": True}
    )
    assert resp.status_code in (200, 201, 204), resp.text
    r = api.run(
        uhttp, sandbox, "stat -c '%u:%g %n' /root/from-api.txt /srv/made/by/api; cat /root/from-api.txt"
    )
    assert r["stdout"].splitlines() == ["0:0 /root/from-api.txt", "0:0 /srv/made/by/api", "hello"], r
    api.run(uhttp, sandbox, "echo inside > /root/from-inside.txt")
    resp = uhttp.post(f"/v1/sandbox/{sandbox}/filesystem/read-file", json={"path": "/root/from-inside.txt"})
    assert resp.status_code == 200 and b"inside" in resp.content, resp.text


def test_terminal(uhttp: httpx.Client, userns_server: ServerProcess, sandbox: str) -> None:
    r = uhttp.post(f"/v1/sandbox/{sandbox}/pty", json={"id": "t", "cols": 80, "rows": 24})
    assert r.status_code == 201, r.text
    url = userns_server.base_url.replace("http://", "ws://") + f"/v1/sandbox/{sandbox}/pty/t/connect"
    bounding = "awk '/^CapBnd/ {print $2}' /proc/self/status"
    with connect(url, additional_headers=userns_server.headers, open_timeout=30) as conn:
        conn.send(
            f"echo uid=$(id -u) bnd=$({bounding}) map=$(awk '{{print $2}}' /proc/self/uid_map)\n".encode()
        )
        seen = b""
        deadline = time.monotonic() + 15
        while b"map=" + str(BASE)[:3].encode() not in seen and time.monotonic() < deadline:
            message = conn.recv(timeout=max(0.1, deadline - time.monotonic()))
            seen += message if isinstance(message, bytes) else message.encode()
    assert b"uid=0 bnd=" in seen and b"map=0\r\n" not in seen, seen[-300:]
    # no more capabilities than a command gets: CAP_SETPCAP stays the agent's (agent.c)
    command_bounding = api.run(uhttp, sandbox, bounding)["stdout"].strip()
    assert f"bnd={command_bounding} map=".encode() in seen, (command_bounding, seen[-300:])
    assert uhttp.delete(f"/v1/sandbox/{sandbox}/pty/t").status_code == 204


IDENTITY = "grep -E '^Cap(Eff|Bnd):' /proc/self/status; cat /proc/self/oom_score_adj; id -u"
CAP_SETPCAP = 8


def through_the_runtime_exec(http: httpx.Client, sid: str) -> tuple[str, str]:
    """A command's capabilities, OOM score and uid through the agent, then through the runtime's
    ``exec`` (the fallback when the agent cannot take a command: here its socket is gone)."""
    by_agent = api.run(http, sid, IDENTITY)["stdout"]
    api.run(http, sid, "rm -f /.atoll/run/agent.sock")
    r = api.run(http, sid, f"{IDENTITY}; ls /.atoll/run")
    assert r["exit_code"] == 0, r
    lines = r["stdout"].splitlines()
    # the fallback's wrapper spools output in /.atoll/run (oci_exec): this went through it
    assert any(name.endswith(".out") for name in lines[4:]), r
    return by_agent, "".join(f"{line}\n" for line in lines[:4])


def assert_command_identity(by_agent: str, fallback: str) -> None:
    assert fallback == by_agent, (by_agent, fallback)
    fields = dict(line.split(":", 1) for line in fallback.splitlines() if ":" in line)
    for name in ("CapEff", "CapBnd"):
        assert not int(fields[name], 16) & (1 << CAP_SETPCAP), (name, fallback)  # the agent's alone
    assert fallback.split("\n")[2:4] == ["500", "0"], fallback  # the sandbox's OOM score, root


def test_runtime_exec_fallback_gets_a_commands_capabilities_not_the_agents(
    uhttp: httpx.Client, sandbox: str
) -> None:
    """``runc exec`` would give the command PID 1's capabilities, which in a user namespace hold
    CAP_SETPCAP (agent.c keeps it to stay untraceable): the fallback names them in a process
    file (``oci_config.command_process``), as terminals do."""
    assert_command_identity(*through_the_runtime_exec(uhttp, sandbox))


def test_runtime_exec_fallback_on_the_default_runtime(http: httpx.Client) -> None:
    if os.environ.get("ATOLL_TEST_RUNTIME") == "runsc":
        pytest.skip("gVisor's commands never take the OCI runtime's exec")
    sid = api.create(http)["id"]
    try:
        by_agent, fallback = through_the_runtime_exec(http, sid)
        assert_command_identity(by_agent, fallback)
        # the recorded environment and the request's both reach the command
        r = api.run(http, sid, "echo $PATH $ATOLL_PROBE", envs={"ATOLL_PROBE": "seen"})
        assert r["stdout"].split()[-1] == "seen" and "/usr/bin" in r["stdout"], r
    finally:
        api.delete(http, sid)


def test_snapshot_fork_then_pause_checkpoint_and_resume(uhttp: httpx.Client, sandbox: str) -> None:
    if not uhttp.get("/v1/health").json()["checkpoint"]:
        pytest.skip("no checkpointing runtime (runc and CRIU) on this host")
    loop = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.1; done"
    api.run(uhttp, sandbox, f"nohup sh -c '{loop}' >/dev/null 2>&1 &")
    api.run(uhttp, sandbox, "echo kept > /root/kept && chown 1000:1000 /root/kept")
    api.run(uhttp, sandbox, "for _ in $(seq 300); do [ -s /tmp/n ] && break; sleep 0.1; done")
    r = uhttp.post(f"/v1/sandbox/{sandbox}/snapshot/create", json={"name": f"userns-{sandbox}"})
    assert r.status_code == 201, r.text
    snapshot = r.json()["id"]
    try:
        r = uhttp.post("/v1/snapshot/restore", json={"snapshot_name": f"userns-{sandbox}"})
        assert r.status_code == 201, r.text
        fork = r.json()["id"]
        try:
            # another range, the same files and owners (stored in the ids seen inside), and
            # the counter runs on in the fork
            assert mapped_base(uhttp, fork) != mapped_base(uhttp, sandbox)
            out = api.run(
                uhttp, fork, "stat -c '%u:%g' /root/kept; cat /root/kept; cat /sys/class/net/eth0/operstate"
            )
            assert out["stdout"].split() == ["1000:1000", "kept", "up"], out
            first = int(api.run(uhttp, fork, "cat /tmp/n")["stdout"])
            assert int(api.run(uhttp, fork, "sleep 0.5; cat /tmp/n")["stdout"]) > first
        finally:
            uhttp.delete(f"/v1/sandbox/{fork}/")
    finally:
        uhttp.delete(f"/v1/snapshot/{snapshot}")
    # the source ran on; now pause it to disk (CRIU) and resume it on request
    before = int(api.run(uhttp, sandbox, "cat /tmp/n")["stdout"])
    paused = uhttp.post(f"/v1/sandbox/{sandbox}/pause").json()
    assert paused["pause_kind"] == "checkpoint", paused
    after = int(api.run(uhttp, sandbox, "sleep 0.3; cat /tmp/n")["stdout"])
    assert before < after < before + 30, (before, after)
    assert mapped_base(uhttp, sandbox) >= BASE
    out = api.run(uhttp, sandbox, "cat /sys/class/net/eth0/operstate; stat -c %u:%g /root/kept")
    assert out["stdout"].split() == ["up", "1000:1000"], (
        out
    )  # the network moved into the restored sandbox too


@pytest.mark.attempt("trace or read the agent of a restored sandbox (user namespaces on)")
def test_restored_sandbox_checkpoints_again_and_its_agent_stays_untraceable(
    uhttp: httpx.Client, sandbox: str, blocked: Blocked
) -> None:
    """The agent is dumpable in a user namespace (CRIU could not dump a restored one otherwise)
    and kept out of reach by a capability nothing else inside has (agent.c)."""
    probe = (
        "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); "
        "print(l.ptrace(16, 1, 0, 0), ctypes.get_errno())'; "
        "cat /proc/1/environ >/dev/null 2>&1 || echo environ-denied; "
        "cat /proc/1/maps >/dev/null 2>&1 || echo maps-denied"
    )
    for round_ in range(3):  # boot, then two restores: each is checkpointed, none is traceable
        assert api.run(uhttp, sandbox, probe)["stdout"].split() == [
            "-1",
            "1",
            "environ-denied",
            "maps-denied",
        ], round_  # PTRACE_ATTACH: EPERM
        paused = uhttp.post(f"/v1/sandbox/{sandbox}/pause").json()
        assert paused["pause_kind"] == "checkpoint", (round_, paused)
    blocked("PTRACE_ATTACH EPERM and /proc/1 environ, maps EACCES before and after each restore")


def test_a_restarted_server_reclaims_leftover_claims_and_keeps_live_ones() -> None:
    """Claims whose slot is gone (an older format's naming a sandbox, a slot removed while the
    server was down, a killed server's) are dropped when a server starts, not when the ranges
    run out; a running sandbox's claim stays, and so does another server's fresh one (its slot
    may be on its way: ``userns.CLAIM_GRACE_S``)."""
    from atoll.runtime.userns import CLAIMS_DIR
    from atoll.runtime.userns_slot import SLOT_DIR

    if os.environ.get("ATOLL_TEST_RUNTIME") == "runsc":
        pytest.skip("user namespaces are for the OCI backends")
    base = 0x7400_0000  # a grid of its own: no other test server's ranges
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-reclaim-", dir="/var/tmp"))
    args = ("--userns", "--userns-base", str(base), "--userns-ranges", "16", "--netns-pool-size", "1")
    server = side_server(data_dir, "rc", 9, runtime="runc", extra_args=args)
    owner, gone = f"atoll_{server.instance}", f"atoll_{server.instance}x"
    planted = {
        base + 15 * RANGE: f"{owner}\nsbx-of-an-older-format",
        base + 14 * RANGE: f"{owner}\natoll-{server.instance}-60",  # no such slot any more
        base + 13 * RANGE: f"{gone}\natoll-{server.instance}x-1",  # a killed server's, an hour old
        # a killed server's whose slot file was touched but never had its namespace bound on it
        base + 11 * RANGE: f"{gone}\natoll-{server.instance}x-3",
    }
    unbound_slot = SLOT_DIR / f"atoll-{server.instance}x-3"
    lone_base = SLOT_DIR / f"atoll-{server.instance}-61.base"  # its slot removed, the file not
    # a server killed between binding a slot's user namespace and its network namespace
    lone_userns = SLOT_DIR / f"atoll-{server.instance}-62"
    fresh = CLAIMS_DIR / str(base + 12 * RANGE)
    try:
        with (
            serving(server),
            httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as h,
        ):
            sid = api.create(h)["id"]
            live = (slot_of(server, sid), mapped_base(h, sid))
            for first, text in planted.items():
                (CLAIMS_DIR / str(first)).write_text(text)
            hour_ago = time.time() - 3600
            for stale in (base + 13 * RANGE, base + 11 * RANGE):
                os.utime(CLAIMS_DIR / str(stale), (hour_ago, hour_ago))
            unbound_slot.touch()
            lone_base.write_text(str(base + 10 * RANGE))
            holder = subprocess.Popen(["unshare", "--user", "sleep", "60"])
            try:
                time.sleep(0.2)
                lone_userns.touch()
                namespace = f"/proc/{holder.pid}/ns/user"
                subprocess.run(["mount", "--bind", namespace, str(lone_userns)], check=True)
            finally:
                holder.kill()
                holder.wait()
            fresh.write_text(f"{gone}\natoll-{server.instance}x-2")
            server.stop()
            server.start()
            assert not [first for first in planted if (CLAIMS_DIR / str(first)).exists()]
            assert fresh.exists()
            assert not lone_base.exists()
            assert not lone_userns.exists() and str(lone_userns) not in Path("/proc/mounts").read_text()
            assert claimed_ranges()[live[0]] == live[1] == mapped_base(h, sid)
            assert api.run(h, sid, "echo still")["stdout"] == "still\n"
    finally:
        for first in planted:
            (CLAIMS_DIR / str(first)).unlink(missing_ok=True)
        fresh.unlink(missing_ok=True)
        unbound_slot.unlink(missing_ok=True)
        lone_base.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(lone_userns)], capture_output=True)
        lone_userns.unlink(missing_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)


# pure logic: no server ---------------------------------------------------------------------------
def test_ranges_are_exclusive_persistent_and_reclaimed(tmp_path: Path) -> None:
    from atoll.runtime.userns import Ranges, RangesExhausted

    ranges = Ranges(tmp_path, base=BASE, count=2, owner="atoll-x", grace_s=0)
    a, b = ranges.claim("a", lambda o, s: True), ranges.claim("b", lambda o, s: True)
    assert {a.base, b.base} == {BASE, BASE + RANGE} and ranges.claim("a", lambda o, s: True) == a
    with pytest.raises(RangesExhausted):
        ranges.claim("c", lambda o, s: True)  # both holders still run
    again = Ranges(tmp_path, base=BASE, count=2, owner="atoll-x", grace_s=0)  # a restarted server sees them
    assert again.of("a") == a and again.of("b") == b
    assert again.claim("c", lambda o, s: s != "a") == a  # a's sandbox is gone: its range is reused
    again.release("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(a.base)]
    with pytest.raises(ValueError):
        Ranges(tmp_path, base=BASE + 1, count=2, owner="atoll-x")  # would straddle others' ranges


def test_ranges_are_host_wide(tmp_path: Path) -> None:
    """Two servers (instances) on one host, same base, one claims directory: never one range for
    two sandboxes, and neither drops a claim of the other's that still runs."""
    from atoll.runtime.userns import Ranges, RangesExhausted

    one = Ranges(tmp_path, base=BASE, count=3, owner="atoll-one", grace_s=0)
    two = Ranges(tmp_path, base=BASE, count=3, owner="atoll-two", grace_s=0)
    running = {("atoll-one", "a"), ("atoll-two", "a"), ("atoll-two", "b")}
    alive = lambda o, s: (o, s) in running  # noqa: E731
    got = [one.claim("a", alive), two.claim("a", alive), two.claim("b", alive)]
    assert len({r.base for r in got}) == 3
    with pytest.raises(RangesExhausted):
        one.claim("c", alive)  # all three run, whoever's they are
    running.discard(("atoll-two", "b"))  # two's b died without a release (its server killed)
    c = one.claim("c", alive)
    assert c == got[2]
    two.release("b")  # late: the claim is one's now and stays
    assert (tmp_path / str(c.base)).read_text() == "atoll-one\nc"
    assert Ranges(tmp_path, base=BASE, count=3, owner="atoll-one").of("c") == c
    restarted = Ranges(tmp_path, base=BASE, count=3, owner="atoll-two", grace_s=0)
    restarted.sweep(lambda o, s: o == "atoll-one")  # its a ended while it was down; one's still run
    assert restarted.of("a") is None and sorted(p.read_text() for p in tmp_path.iterdir()) == [
        "atoll-one\na",
        "atoll-one\nc",
    ]


def test_start_up_sweep_reclaims_leftovers_but_not_a_slot_on_its_way(tmp_path: Path) -> None:
    """A server starting drops its own dead claims at once, and other servers' dead ones only
    once older than the grace: a claim is written before its slot exists."""
    from atoll.runtime.userns import Ranges

    other = Ranges(tmp_path, base=BASE, count=4, owner="atoll-other")
    on_its_way = other.claim("slot-being-made", lambda o, s: True)
    gone = other.claim("slot-of-a-killed-server", lambda o, s: True)
    old = time.time() - 3600
    os.utime(tmp_path / str(gone.base), (old, old))
    # created and never written (its server killed in between): an hour old, and a fresh one
    never_written = tmp_path / str(BASE + 3 * RANGE)
    never_written.touch()
    os.utime(never_written, (old, old))
    mine = Ranges(tmp_path, base=BASE, count=4, owner="atoll-me")
    stale = mine.claim("sbx-of-an-older-format", lambda o, s: True)
    restarted = Ranges(tmp_path, base=BASE, count=4, owner="atoll-me")
    restarted.sweep(lambda o, s: False)  # no holder exists
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(on_its_way.base)]
    assert restarted.of("sbx-of-an-older-format") is None and stale.base != on_its_way.base


@pytest.mark.parametrize("busybox", [True, False], ids=["busybox", "util-linux"])
def test_mapped_child_is_in_its_namespaces_with_the_map(
    busybox: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child a slot's namespaces come from (``idmap.mapped_child``): in new user and network
    namespaces, its map written, gone when the block ends (static busybox or util-linux)."""
    from atoll.runtime import idmap

    if not busybox:
        monkeypatch.setattr(idmap, "BUSYBOX", "/nonexistent/busybox")
    with idmap.mapped_child(("user", "net"), BASE, RANGE) as pid:
        for kind in ("user", "net"):
            assert os.stat(f"/proc/{pid}/ns/{kind}").st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
        for name in ("uid_map", "gid_map"):
            assert Path(f"/proc/{pid}/{name}").read_text().split() == ["0", str(BASE), str(RANGE)]
    assert not Path(f"/proc/{pid}").exists()


def test_checkpoint_image_gets_the_new_range(tmp_path: Path) -> None:
    from atoll.runtime.userns import IdRange, image_for_range

    image = tmp_path / "image"
    image.mkdir()
    # userns-14.img as CRIU 4.2 wrote it for base 0x70000000 (two magics, a size, the entry)
    entry = bytes.fromhex("0a0c080010808080800718808004120c080010808080800718808004")
    (image / "userns-14.img").write_bytes(
        bytes.fromhex("1943565464947551") + len(entry).to_bytes(4, "little") + entry
    )
    (image / "pages-1.img").write_bytes(b"pages")
    view = image_for_range(image, tmp_path / "view", IdRange(0x7000_0000))
    assert (view / "userns-14.img").read_bytes() == (
        image / "userns-14.img"
    ).read_bytes()  # same range: same bytes
    view = image_for_range(image, tmp_path / "view", IdRange(0x7001_0000))
    rewritten = (view / "userns-14.img").read_bytes()
    assert rewritten[:8] == (image / "userns-14.img").read_bytes()[:8] and rewritten != entry
    assert (0x7001_0000).to_bytes(4, "little") not in rewritten  # varints, not fixed ints
    assert (view / "pages-1.img").read_bytes() == b"pages" and (view / "pages-1.img").stat().st_nlink == 2
