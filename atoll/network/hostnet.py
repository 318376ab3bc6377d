"""What the egress service needs to know about the host's own networking, read (and the one
change it makes) over rtnetlink with pyroute2: the service address on the loopback, the host's
addresses, and the networks it is directly on."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from pyroute2 import IPRoute

SCOPE_LINK = 253
MAIN_TABLE = 254


def loopback_address(address: str, *, present: bool) -> None:
    """Add (``present``) or remove ``address``/32 on ``lo``; idempotent either way."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        there = any(a.get("IFA_LOCAL") == address for a in ipr.get_addr(family=socket.AF_INET, index=lo))
        if present and not there:
            ipr.addr("add", index=lo, address=address, prefixlen=32)
        elif not present and there:
            ipr.addr("del", index=lo, address=address, prefixlen=32)


def addresses_and_networks(subnet: str, known: Sequence[str]) -> tuple[list[str], list[str]]:
    """The host's IPv4 addresses, and the networks it is directly on (its LAN, a cloud's VPC
    subnet: on-link routes of the main table), but for the sandboxes' own ``subnet`` and those
    inside a ``known`` range already."""
    sandboxes = ipaddress.IPv4Network(subnet)
    covered = [ipaddress.IPv4Network(c) for c in known]
    with IPRoute() as ipr:
        addresses = ipr.get_addr(family=socket.AF_INET)
        routes = ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
    networks = set()
    for route in routes:
        dst = route.get("RTA_DST")
        if route["scope"] != SCOPE_LINK or not dst or route["dst_len"] == 0:
            continue
        net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
        if not net.subnet_of(sandboxes) and not any(net.subnet_of(c) for c in covered):
            networks.add(str(net))
    local = [str(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in addresses]
    return [a for a in local if a != "None"], sorted(networks)
