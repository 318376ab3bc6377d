"""The disk pool (``atoll.runtime.disk.DiskPool``): creates take disks mounted ahead of demand,
and a pooled disk is released like any other resource: on delete, on a failed create, at
shutdown, and by the start-up reconciliation after a crash."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess, runtime_double, serving, side_server

pytestmark = [pytest.mark.privileged]

POOL = 2
# a runtime double: the real runc, except that while the flag file exists `run` fails at once
WRAPPER = """#!/bin/bash
if [[ -e {flag} ]] && [[ " $* " == *" run "* ]]; then
  echo "injected failure: run refused" >&2
  exit 1
fi
exec {real} "$@"
"""


@pytest.fixture(scope="module")
def layout() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="atoll-test-diskpool-", dir="/var/tmp"))
    runtime_double(root, WRAPPER)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_server(layout: Path) -> ServerProcess:
    return side_server(
        layout / "data",
        "dpool",
        3,
        runtime="runc",
        extra_args=("--disk-pool-size", str(POOL), "--runtime-binary", str(layout / "bin" / "runc")),
    )


@pytest.fixture(scope="module")
def pool_server(layout: Path) -> Iterator[ServerProcess]:
    with serving(make_server(layout)) as server:
        yield server
    leftover = (pooled_loops(server), pooled_mounts(server))
    assert leftover == ({}, set()), f"pooled disks outlived the server: {leftover}"


def loops_by_backing() -> dict[str, str]:
    """backing file -> loop device, for every loop device in use."""
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found[backing.read_text().strip()] = backing.parent.parent.name
        except OSError:
            continue
    return found


def pooled_loops(server: ServerProcess) -> dict[str, str]:
    """pool entry -> loop device, for the disks in the server's pool."""
    prefix = f"{server.data_dir}/disk-pool/"
    return {
        path[len(prefix) :].split("/")[0]: device
        for path, device in loops_by_backing().items()
        if path.startswith(prefix)
    }


def pooled_mounts(server: ServerProcess) -> set[str]:
    prefix = f"{server.data_dir}/disk-pool/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines if line.split()[4].startswith(prefix)}


def wait_for_pool(http: httpx.Client, server: ServerProcess, count: int = POOL, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while http.get("/v1/health").json()["disk_pool_ready"] < count or len(pooled_loops(server)) < count:
        assert time.monotonic() < deadline, "the disk pool never filled"
        time.sleep(0.2)


def test_a_create_takes_a_pooled_disk_and_delete_releases_it(pool_server: ServerProcess) -> None:
    server = pool_server
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        wait_for_pool(http, server)
        pooled_devices = set(pooled_loops(server).values())
        sid = api.create(http)["id"]
        image = f"{server.data_dir}/sandboxes/{sid}/disk.img"
        device = loops_by_backing().get(image)
        assert device in pooled_devices, "the sandbox's disk did not come from the pool"
        # it is the sandbox's own filesystem: the upper layer lives on it, and it is fresh
        assert api.run(http, sid, "echo kept > /root/mine; ls /root")["stdout"] == "mine\n"
        upper = server.data_dir / "sandboxes" / sid / "disk" / "upper"
        assert (upper / "root" / "mine").read_text() == "kept\n"
        api.delete(http, sid)
        assert image not in loops_by_backing()
        wait_for_pool(http, server)  # refilled in the background
        assert_no_leaks(server)


def test_a_failed_create_releases_its_pooled_disk(pool_server: ServerProcess, layout: Path) -> None:
    server = pool_server
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        wait_for_pool(http, server)
        before = set(pooled_loops(server))
        flag = layout / "fail-run"
        flag.touch()
        try:
            for _ in range(POOL + 1):  # more than the pool holds: pooled disks and a cold one
                r = http.post("/v1/sandbox", json={})
                assert r.status_code == 500 and "sandbox failed to start" in r.text, r.text
        finally:
            flag.unlink()
        assert not before & set(pooled_loops(server)), "the failed creates did not take pooled disks"
        assert http.get("/v1/sandboxes").json()["total_items"] == 0
        sandboxes = f"{server.data_dir}/sandboxes/"
        assert not [p for p in loops_by_backing() if p.startswith(sandboxes)]
        assert_no_leaks(server)
        sid = api.create(http)["id"]  # and the server still serves
        assert api.run(http, sid, "echo fine")["stdout"] == "fine\n"
        api.delete(http, sid)


def test_pooled_disks_of_a_crashed_server_are_reconciled(pool_server: ServerProcess, layout: Path) -> None:
    server = pool_server
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        wait_for_pool(http, server)
        sid = api.create(http)["id"]
        wait_for_pool(http, server)
    crashed = set(pooled_loops(server))
    server.kill9()
    assert len(crashed) == POOL  # left behind, mounted
    server.start()
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        assert not crashed & set(pooled_loops(server)), "the crashed server's pooled disks survived"
        # the adopted sandbox keeps its own disk, and the pool fills again
        assert api.run(http, sid, "echo adopted")["stdout"] == "adopted\n"
        wait_for_pool(http, server)
        api.delete(http, sid)
        assert_no_leaks(server)
