"""The leak checker: everything a test server's instance holds on the host must belong to a
sandbox the API still reports (or to the network pool). Compared: containers, cgroups, mounts,
loop devices of sandbox disks, network namespaces, veths, per-sandbox nftables objects, state
directories, snapshot directories, exec pid files, helper processes and unreaped children."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests._support.server import IFACE_PREFIX, INSTANCE, ServerProcess

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class HostView:
    containers: set[str]
    cgroups: set[str]
    cgroup_procs: int
    mounts: set[str]
    dirs: set[str]
    netns: set[str]
    veths: set[str]
    loops: set[str] = field(default_factory=set)  # sandboxes whose disk image is on a loop device
    # the disk pool's ready disks (atoll.runtime.disk.DiskPool): entries on a loop device, mounted
    pooled_loops: set[str] = field(default_factory=set)
    pooled_mounts: set[str] = field(default_factory=set)
    egress_slots: set[int] = field(default_factory=set)  # slots with per-sandbox nft objects
    exec_pid_files: list[str] = field(default_factory=list)
    helpers: list[str] = field(default_factory=list)  # processes working on this instance's state
    snapshot_dirs: set[str] = field(default_factory=set)


def option(server: ServerProcess, flag: str, default: str) -> str:
    """A server's ``--flag`` value as it was started (subclasses may rewrite argv)."""
    argv = server.argv()
    return argv[argv.index(flag) + 1] if flag in argv else default


def host_view(data_dir: Path, *, instance: str | None = None, iface_prefix: str | None = None) -> HostView:
    instance = instance or INSTANCE
    iface_prefix = iface_prefix or IFACE_PREFIX
    containers: set[str] = set()
    exec_pid_files: list[str] = []
    for runtime in ("crun", "runc", "runsc"):
        root = Path(f"/run/atoll/{instance}/{runtime}")
        if root.is_dir():
            exec_pid_files += [p.name for p in root.glob("*.exec.*.pid")]
        if root.is_dir():
            argv = [runtime, "--root", str(root), "list", "--quiet"]
            out = subprocess.run(argv, capture_output=True, text=True)
            containers |= {line.strip() for line in out.stdout.splitlines() if line.strip()}
    cgroups: set[str] = set()
    procs = 0
    for controller in CGROUP_ROOT.iterdir():
        parent = controller / f"atoll_{instance}"
        if parent.is_dir():
            for child in parent.iterdir():
                if child.is_dir():
                    cgroups.add(child.name)
                    if controller.name == "pids":
                        procs += len((child / "cgroup.procs").read_text().split())
    sandboxes_dir = str(data_dir / "sandboxes") + "/"
    mounts = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.startswith(sandboxes_dir):
            mounts.add(mount_point[len(sandboxes_dir) :].split("/")[0])
    dirs = (
        {p.name for p in (data_dir / "sandboxes").iterdir()} if (data_dir / "sandboxes").exists() else set()
    )
    netns_dir = Path("/run/netns")
    netns = (
        {p.name for p in netns_dir.iterdir() if p.name.startswith(f"atoll-{instance}-")}
        if netns_dir.exists()
        else set()
    )
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    veths = {
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if line.split(":")[1].strip().startswith(iface_prefix)
    }
    snapshots_dir = data_dir / "snapshots"
    pool_dir = str(data_dir / "disk-pool") + "/"
    pooled_mounts = {
        line.split()[4][len(pool_dir) :].split("/")[0]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(pool_dir)
    }
    return HostView(
        containers,
        cgroups,
        procs,
        mounts,
        dirs,
        netns,
        veths,
        loops=_loop_disks(sandboxes_dir),
        pooled_loops=_loop_disks(pool_dir),
        pooled_mounts=pooled_mounts,
        egress_slots=_egress_slots(instance),
        exec_pid_files=exec_pid_files,
        helpers=_helpers(instance, data_dir),
        snapshot_dirs={p.name for p in snapshots_dir.iterdir()} if snapshots_dir.is_dir() else set(),
    )


def _loop_disks(sandboxes_dir: str) -> set[str]:
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip()
        except OSError:
            continue
        if path.startswith(sandboxes_dir):
            found.add(path[len(sandboxes_dir) :].split("/")[0])
    return found


def _egress_slots(instance: str) -> set[int]:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", f"atoll_{instance}"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return set()
    slots = set()
    for item in json.loads(out.stdout).get("nftables", []):
        for kind in ("chain", "set", "counter"):
            match = re.match(r"^s(\d+)_", item.get(kind, {}).get("name", ""))
            if match:
                slots.add(int(match.group(1)))
    return slots


RUNSC_SANDBOX_PROCESSES = ("runsc-sandbox ", "runsc-gofer ")


def _helpers(instance: str, data_dir: Path) -> list[str]:
    """Processes (other than a server) whose command line names this instance's runtime state
    or data dir: runtime execs, CRIU, copies. None should outlive the request that started them."""
    marks = (f"/run/atoll/{instance}/", f"{data_dir}/")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (
            any(m in cmdline for m in marks)
            and not cmdline.startswith(RUNSC_SANDBOX_PROCESSES)  # a gVisor sandbox (counted as one)
            and "atoll.cli.main serve" not in cmdline
            and "pytest" not in cmdline
        ):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def api_sandboxes(server: ServerProcess) -> dict[str, str]:
    """id -> state for every sandbox of the test org that the API still knows."""
    found: dict[str, str] = {}
    page = 1
    while True:
        r = httpx.get(
            f"{server.base_url}/v1/sandboxes",
            params={"page": page, "page-size": 100},
            headers=server.headers,
            timeout=30,
        )
        r.raise_for_status()
        body = r.json()
        found.update({item["id"]: item["state"] for item in body["items"]})
        if len(found) >= body["total_items"] or not body["items"]:
            return found
        page += 1


def api_snapshots(server: ServerProcess) -> set[str]:
    found: set[str] = set()
    page = 1
    while True:
        r = httpx.get(
            f"{server.base_url}/v1/snapshots",
            params={"page": page, "page-size": 100},
            headers=server.headers,
            timeout=30,
        )
        r.raise_for_status()
        body = r.json()
        found |= {item["id"] for item in body["items"]}
        if len(found) >= body["total_items"] or not body["items"]:
            return found
        page += 1


def userns_slot_leaks(instance: str, netns: set[str]) -> list[str]:
    """With user namespaces on, each slot's netns has its user namespace and its range claim
    (``atoll.runtime.userns_slot``), and nothing else of the instance's does."""
    from atoll.runtime.userns import CLAIMS_DIR
    from atoll.runtime.userns_slot import SLOT_DIR

    prefix = f"atoll-{instance}-"
    users = {p.name for p in SLOT_DIR.glob(f"{prefix}*") if not p.name.endswith(".base")}
    claims = set()
    for claim in CLAIMS_DIR.iterdir() if CLAIMS_DIR.is_dir() else ():
        try:
            holder = claim.read_text().partition("\n")[2]
        except FileNotFoundError:  # released meanwhile (the directory is host-wide: any server's)
            continue
        if holder.startswith(prefix):
            claims.add(holder)
    return [
        f"{what} {sorted(found)} for netns {sorted(netns)}"
        for what, found in (("slot user namespaces", users), ("range claims", claims))
        if found != netns
    ]


def container_state(instance: str, container_id: str) -> str:
    """``id (status, pid N, created T)`` as its runtime tells it: a leak report says what it found."""
    for runtime in ("crun", "runc", "runsc"):
        root = Path(f"/run/atoll/{instance}/{runtime}")
        if not root.is_dir():  # a runtime this instance does not use (and may not be installed)
            continue
        argv = [runtime, "--root", str(root), "state", container_id]
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode == 0:
            try:
                state = json.loads(out.stdout)
            except ValueError:
                return f"{container_id} ({runtime}: {out.stdout[:200]!r})"
            status, pid, created = state.get("status"), state.get("pid"), state.get("created")
            return f"{container_id} ({runtime} {status}, pid {pid}, created {created})"
    return container_id


def leaks(server: ServerProcess) -> list[str]:
    sandboxes = api_sandboxes(server)
    live = {i for i, s in sandboxes.items() if s in ("running", "paused")}
    running = {i for i, s in sandboxes.items() if s == "running"}
    kept = set(sandboxes)  # stopped sandboxes keep their directory (the upper layer)
    health = httpx.get(f"{server.own_url}/v1/health", timeout=10).json()
    pool_ready = health["network_pool_ready"]
    view = host_view(
        server.data_dir,
        instance=option(server, "--instance", INSTANCE),
        iface_prefix=option(server, "--iface-prefix", IFACE_PREFIX),
    )
    problems = []
    # warm sandboxes (atoll.server.warm) run without a record until a create claims one
    warm = view.containers - set(sandboxes)
    if len(warm) > health.get("warm_pool_ready", 0):
        states = [container_state(option(server, "--instance", INSTANCE), cid) for cid in sorted(warm)]
        problems.append(f"containers without a record: {states}")
    kept |= warm
    live = live | warm
    # a sandbox paused by checkpoint has no processes and no root mount; frozen ones have both
    if not running <= view.containers <= live:
        found = sorted(view.containers)
        problems.append(f"containers {found}: running {sorted(running)}, live {sorted(live)}")
    if view.cgroups - live:
        problems.append(f"cgroups without a sandbox: {sorted(view.cgroups - live)}")
    if not running <= view.mounts <= live:
        problems.append(f"root mounts {sorted(view.mounts)}: running {sorted(running)}, live {sorted(live)}")
    if view.dirs - kept:
        problems.append(f"state dirs without a sandbox: {sorted(view.dirs - kept)}")
    if len(view.netns) != len(live) + pool_ready:
        problems.append(
            f"{len(view.netns)} netns for {len(live)} live or warm sandboxes + {pool_ready} pooled"
        )
    if len(view.veths) != len(view.netns):
        problems.append(f"{len(view.veths)} veths for {len(view.netns)} netns")
    if health.get("userns"):
        problems += userns_slot_leaks(option(server, "--instance", INSTANCE), view.netns)
    if view.loops - live:
        problems.append(f"disk images still on loop devices: {sorted(view.loops - live)}")
    # pooled disks belong to no sandbox; there are never more than the pool says it holds
    pooled = health.get("disk_pool_ready", 0)
    if len(view.pooled_loops) > pooled or view.pooled_mounts != view.pooled_loops:
        problems.append(
            f"pooled disks: {len(view.pooled_loops)} on loop devices, {len(view.pooled_mounts)} mounted,"
            f" {pooled} in the pool"
        )
    if len(view.egress_slots) > len(live):
        problems.append(f"per-sandbox nft objects for {len(view.egress_slots)} slots, {len(live)} live")
    if view.exec_pid_files:
        problems.append(f"exec pid files left: {view.exec_pid_files[:5]}")
    if view.helpers:
        problems.append(f"helper processes left: {view.helpers[:5]}")
    if view.snapshot_dirs - api_snapshots(server):
        problems.append(
            f"snapshot dirs without a snapshot: {sorted(view.snapshot_dirs - api_snapshots(server))}"
        )
    if server.proc is not None and (zombies := zombies_of(server.proc.pid)):
        problems.append(f"unreaped children of the server: {zombies[:10]}")
    return problems


def assert_no_leaks(server: ServerProcess, timeout: float = 15.0) -> None:
    """Eventually consistent: the pool refills in the background, so look again for a while."""
    deadline = time.monotonic() + timeout
    problems = leaks(server)
    while problems and time.monotonic() < deadline:
        time.sleep(0.3)
        problems = leaks(server)
    assert not problems, "leaked host resources:\n" + "\n".join(problems)
