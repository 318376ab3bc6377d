"""The leak checker: everything the test instance holds on the host must belong to a sandbox
the API still reports (or to the network pool). Mounts, containers, cgroups, processes, netns,
veths and state directories are all compared."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
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


def host_view(data_dir: Path) -> HostView:
    containers: set[str] = set()
    for runtime in ("crun", "runc"):
        root = Path(f"/run/atoll/{INSTANCE}/{runtime}")
        if root.is_dir():
            argv = [runtime, "--root", str(root), "list", "--quiet"]
            out = subprocess.run(argv, capture_output=True, text=True)
            containers |= {line.strip() for line in out.stdout.splitlines() if line.strip()}
    cgroups: set[str] = set()
    procs = 0
    for controller in CGROUP_ROOT.iterdir():
        parent = controller / f"atoll_{INSTANCE}"
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
        {p.name for p in netns_dir.iterdir() if p.name.startswith(f"atoll-{INSTANCE}-")}
        if netns_dir.exists()
        else set()
    )
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    veths = {
        line.split(":")[1].strip().split("@")[0]
        for line in links.splitlines()
        if line.split(":")[1].strip().startswith(IFACE_PREFIX)
    }
    return HostView(containers, cgroups, procs, mounts, dirs, netns, veths)


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


def leaks(server: ServerProcess) -> list[str]:
    sandboxes = api_sandboxes(server)
    live = {i for i, s in sandboxes.items() if s in ("running", "paused")}
    running = {i for i, s in sandboxes.items() if s == "running"}
    kept = set(sandboxes)  # stopped sandboxes keep their directory (the upper layer)
    pool_ready = httpx.get(f"{server.base_url}/v1/health", timeout=10).json()["network_pool_ready"]
    view = host_view(server.data_dir)
    problems = []
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
        problems.append(f"{len(view.netns)} netns for {len(live)} live sandboxes + {pool_ready} pooled")
    if len(view.veths) != len(view.netns):
        problems.append(f"{len(view.veths)} veths for {len(view.netns)} netns")
    return problems


def assert_no_leaks(server: ServerProcess, timeout: float = 15.0) -> None:
    """Eventually consistent: the pool refills in the background, so look again for a while."""
    deadline = time.monotonic() + timeout
    problems = leaks(server)
    while problems and time.monotonic() < deadline:
        time.sleep(0.3)
        problems = leaks(server)
    assert not problems, "leaked host resources:\n" + "\n".join(problems)
