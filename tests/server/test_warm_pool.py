"""Warm pools: a claimed warm sandbox is indistinguishable from a freshly booted one, and the
pool's refill never holds up a create."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.runtime.spec import upper_dir
from tests._support import api
from tests._support.leaks import _egress_slots
from tests._support.server import ServerProcess, serving, side_server
from tests.services.conftest import template_present

pytestmark = [pytest.mark.privileged]


@pytest.fixture(scope="module")
def warm_server() -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-warm-", dir="/var/tmp"))
    server = side_server(
        data_dir, "warm", 0, extra_args=("--warm-pool-size", "2", "--warm-template", "system/debian:bookworm")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        leftovers = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        shutil.rmtree(data_dir, ignore_errors=True)
        assert f" {server.iface_prefix}" not in leftovers, "a warm sandbox's veth outlived the server"
        assert not _egress_slots(server.instance), "a warm sandbox's egress rules outlived the server"


def containers(server: ServerProcess) -> set[str]:
    found: set[str] = set()
    for runtime in ("crun", "runc", "runsc"):
        root = Path(f"/run/atoll/{server.instance}/{runtime}")
        if root.is_dir():
            argv = [runtime, "--root", str(root), "list", "--quiet"]
            out = subprocess.run(argv, capture_output=True, text=True)
            found |= set(out.stdout.split())
    return found


def slot_of(server: ServerProcess, sid: str) -> int:
    config = json.loads((server.data_dir / "sandboxes" / sid / "config.json").read_text())
    netns = next(n.get("path") for n in config["linux"]["namespaces"] if n["type"] == "network")
    # in a user namespace the sandbox's network namespace is its own; the pool's is named here
    netns = netns or config.get("annotations", {})["org.atoll.pool-netns"]
    return int(netns.rsplit("-", 1)[1])


def egress_rules(server: ServerProcess, sid: str) -> str:
    """The verdicts of the sandbox's egress policy chain (``s<slot>_out``), as nft prints them."""
    chain = f"s{slot_of(server, sid)}_out"
    argv = ["nft", "list", "chain", "inet", f"atoll_{server.instance}", chain]
    listing = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rules = [line.strip() for line in listing.splitlines() if line.strip().startswith(("goto", "ct", "ip"))]
    return "; ".join(rules)


def wait_for_warm(http: httpx.Client, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while http.get("/v1/health").json()["warm_pool_ready"] < count:
        assert time.monotonic() < deadline, "the warm pool never filled"
        time.sleep(0.2)


def test_claimed_warm_sandbox_is_indistinguishable_from_a_fresh_one(warm_server: ServerProcess) -> None:
    with httpx.Client(base_url=warm_server.base_url, headers=warm_server.headers, timeout=120) as http:
        wait_for_warm(http, 2)
        warm_ids = containers(warm_server)
        assert len(warm_ids) == 2
        listing = http.get("/v1/sandboxes", params={"page-size": 100}).json()
        listed_before = {item["id"] for item in listing["items"]}
        policy = {"mode": "deny-all"}
        body = {"vcpu": 2, "memory": 768, "env_vars": {"WHO": "pooled"}, "network_policy": policy}
        sandbox = api.create(http, **body)
        sid = sandbox["id"]
        assert sid in warm_ids  # it really came from the pool ...
        assert sid not in listed_before  # ... under an id never handed out before
        assert (sandbox["vcpu"], sandbox["memory"], sandbox["network_policy"]) == (2, 768, policy)
        # the sandbox's own disk is untouched: nothing ran in it before the claim
        upper = upper_dir(warm_server.data_dir / "sandboxes" / sid)
        assert list(upper.iterdir()) == []
        out = api.run(http, sid, "echo $WHO; hostname; nproc >/dev/null && echo ok")["stdout"]
        assert out == "pooled\nsandbox\nok\n"
        instance = warm_server.instance
        memory = api.cgroup_file(instance, sid, v1=("memory", "memory.limit_in_bytes"), v2="memory.max")
        assert int(memory.read_text()) == 768 * 1024 * 1024
        cpu = api.cgroup_file(instance, sid, v1=("cpu", "cpu.cfs_quota_us"), v2="cpu.max")
        assert cpu.read_text().split()[0] == "200000"
        network = http.get(f"/v1/sandbox/{sid}/network").json()
        assert network["network_policy"] == {"mode": "deny-all"} and network["attached"] is True
        # in the kernel too: the default policy's rules it was booted with are replaced
        assert egress_rules(warm_server, sid) == "goto deny"
        # a memory hog is held to the claimed limit, not the warm maximum
        hog = api.run(http, sid, "python3 -c 'b = bytearray(1200 * 1024 * 1024)'", timeout=60)
        assert hog["exit_code"] == 137
        api.delete(http, sid)


def test_refill_never_blocks_creates(warm_server: ServerProcess) -> None:
    with httpx.Client(base_url=warm_server.base_url, headers=warm_server.headers, timeout=120) as http:
        wait_for_warm(http, 2)
        ids = [api.create(http, memory=512)["id"] for _ in range(5)]  # 2 claims, then cold boots
        assert len(set(ids)) == 5
        for sid in ids:
            assert api.run(http, sid, "echo up")["stdout"] == "up\n"
            api.delete(http, sid)
        wait_for_warm(http, 2)  # and it refills afterwards
        assert len(containers(warm_server)) == 2


DEFAULT = "system/debian:bookworm"
DESKTOP = "system/desktop:v0.1.0"


def levels(http: httpx.Client) -> dict[str, dict[str, int]]:
    """Each template's pool as health reports it: ``{name: {"ready": n, "size": s}}``."""
    pools: dict[str, dict[str, int]] = http.get("/v1/health").json()["warm_pools"]
    return pools


def wait_for_level(
    http: httpx.Client, template: str, count: int, timeout_s: float = 120
) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout_s
    while (pools := levels(http))[template]["ready"] < count:
        assert time.monotonic() < deadline, f"the {template} pool never reached {count}"
        time.sleep(0.02)
    return pools


def test_the_default_pool_refills_without_waiting_for_the_desktops() -> None:
    """A claim of the default template is refilled at once, not after the slower pools of the
    other templates have filled (a desktop boots in seconds): the next create a moment later
    is warm again. Three rounds with a pool of two: the third needs a refill."""
    assert template_present("system--desktop@v0.1.0"), "make test builds system/desktop first"
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-warm-lanes-", dir="/var/tmp"))
    args: tuple[str, ...] = ("--warm-pool-size", "2", "--warm-template", DEFAULT, "--warm-template", DESKTOP)
    args += ("--warm-desktop-pool-size", "3")
    server = side_server(data_dir, "lanes", 8, runtime="runc", extra_args=args)
    try:
        with (
            serving(server),
            httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http,
        ):
            assert http.get("/v1/health").json()["userns"] is True  # the default, and the case that regressed
            pools = wait_for_level(http, DEFAULT, 2)
            assert pools[DEFAULT]["size"] == 2 and pools[DESKTOP]["size"] == 3
            for _ in range(3):
                pools = wait_for_level(http, DEFAULT, 1)
                # the desktop pool (three boots of a second or more each) is still filling:
                # the default's refill did not wait for it
                assert pools[DESKTOP]["ready"] < 3, pools
                booted = containers(server)
                sid = api.create(http)["id"]
                assert sid in booted, "the create booted a sandbox instead of taking a warm one"
                assert api.run(http, sid, "echo up")["stdout"] == "up\n"
                api.delete(http, sid)
            wait_for_level(http, DESKTOP, 3, timeout_s=240)  # and the other pool fills too
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    leftovers = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {server.iface_prefix}" not in leftovers, "a warm sandbox's veth outlived the server"
    assert not _egress_slots(server.instance), "a warm sandbox's egress rules outlived the server"
