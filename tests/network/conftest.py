"""Fixtures of the egress tests: the lab (a little internet in a namespace, see _lab.py) and an
``atoll serve`` of its own whose sandbox resolver forwards to the lab's DNS server and whose
transforms trust the lab's test CA.

That server is a separate instance (``<test instance>net``, interface prefix ``n<prefix>``,
the upper half of the test subnet), so it can run next to the session server of the other
suites. Override with ATOLL_TEST_NET_INSTANCE / _IFACE_PREFIX / _SUBNET."""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests._support import leaks
from tests._support.server import IFACE_PREFIX, INSTANCE, SUBNET, ServerProcess
from tests.network._lab import Lab

NET_INSTANCE = os.environ.get("ATOLL_TEST_NET_INSTANCE", INSTANCE[:9] + "net")
NET_IFACE_PREFIX = os.environ.get("ATOLL_TEST_NET_IFACE_PREFIX", ("n" + IFACE_PREFIX)[:6])
NET_SUBNET = os.environ.get(
    "ATOLL_TEST_NET_SUBNET", str(list(ipaddress.IPv4Network(SUBNET).subnets(prefixlen_diff=1))[1])
)


@dataclass
class EgressServer(ServerProcess):
    lab: Lab | None = None

    def argv(self) -> list[str]:
        assert self.lab is not None
        argv = super().argv()
        replace = {
            "--instance": NET_INSTANCE,
            "--iface-prefix": NET_IFACE_PREFIX,
            "--subnet": NET_SUBNET,
            "--dns-server": self.lab.hosts["dns"],
        }
        for flag, value in replace.items():
            argv[argv.index(flag) + 1] = value
        return [*argv, "--egress-ca-bundle", str(self.lab.ca_path)]


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab = Lab(NET_INSTANCE, NET_SUBNET, Path(tempfile.mkdtemp(prefix="atoll-lab-", dir="/var/tmp")))
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(lab.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def server(lab: Lab) -> Iterator[ServerProcess]:
    """Overrides the session server for this directory: the egress-enabled one."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-net-", dir="/var/tmp"))
    proc = EgressServer(data_dir=data_dir, lab=lab)
    proc.start()
    try:
        yield proc
    finally:
        proc.delete_everything()
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def egress_slots_in_table() -> set[int]:
    """Slots that have per-sandbox egress objects in the test instance's nft table."""
    from atoll.network import egress_rules
    from atoll.network.nftables import Nft

    nft = Nft()
    try:
        found = set()
        for item in nft.query(f"list table inet atoll_{NET_INSTANCE}"):
            for kind in ("chain", "set", "counter"):
                if kind in item:
                    index = egress_rules.slot_of_object(item[kind]["name"])
                    if index is not None:
                        found.add(index)
        return found
    finally:
        nft.close()


@pytest.fixture
def no_leaks(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    monkeypatch.setattr(leaks, "INSTANCE", NET_INSTANCE)
    monkeypatch.setattr(leaks, "IFACE_PREFIX", NET_IFACE_PREFIX)
    leaks.assert_no_leaks(server)
    live = {
        item["id"]
        for item in httpx.get(
            f"{server.base_url}/v1/sandboxes", params={"page-size": 100}, headers=server.headers, timeout=30
        ).json()["items"]
        if item["state"] in ("running", "paused")
    }
    assert len(egress_slots_in_table()) == len(live), "per-sandbox egress rules without a live sandbox"
