"""Sandbox addresses: the configured subnet is cut into /30 slots, one per live sandbox.

Slot n holds the host end of the veth at .1 and the sandbox at .2 of its /30, so every sandbox
has its own point-to-point link and sandbox-to-sandbox traffic must cross the host's filter."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Slot:
    index: int
    host_ip: str
    sandbox_ip: str
    prefixlen: int
    netns_name: str
    host_ifname: str

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns_name


class AddressPlan:
    def __init__(self, subnet: str, *, instance: str, iface_prefix: str) -> None:
        self.network = ipaddress.IPv4Network(subnet, strict=True)
        if self.network.prefixlen > 28:
            raise ValueError(f"sandbox subnet {subnet} is too small (need /28 or larger)")
        self.instance = instance
        self.iface_prefix = iface_prefix
        self.capacity = self.network.num_addresses // 4 - 1  # slot 0 is left unused
        if len(iface_prefix) + len(str(self.capacity)) > 14:
            raise ValueError("interface prefix too long for Linux's 15-character names")

    @property
    def netns_prefix(self) -> str:
        return f"atoll-{self.instance}-"

    def slot(self, index: int) -> Slot:
        if not 1 <= index <= self.capacity:
            raise ValueError(f"slot {index} outside 1..{self.capacity}")
        base = int(self.network.network_address) + 4 * index
        return Slot(
            index=index,
            host_ip=str(ipaddress.IPv4Address(base + 1)),
            sandbox_ip=str(ipaddress.IPv4Address(base + 2)),
            prefixlen=30,
            netns_name=f"{self.netns_prefix}{index}",
            host_ifname=f"{self.iface_prefix}{index}",
        )

    def index_of_netns(self, name: str) -> int | None:
        if not name.startswith(self.netns_prefix):
            return None
        rest = name[len(self.netns_prefix) :]
        return int(rest) if rest.isdigit() else None

    def index_of_ifname(self, name: str) -> int | None:
        if not name.startswith(self.iface_prefix):
            return None
        rest = name[len(self.iface_prefix) :]
        return int(rest) if rest.isdigit() else None
