"""Creates and removes one sandbox's network: a named netns and a veth pair to the host.
Blocking netlink calls (pyroute2); the pool runs them off the event loop."""

from __future__ import annotations

import contextlib
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from atoll.network.addressing import Slot


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
        f.write(value)


def create(slot: Slot) -> None:
    remove(slot)  # a leftover from a crash must not make the slot unusable
    netns.create(slot.netns_name)
    try:
        with IPRoute() as ipr:
            ipr.link(
                "add",
                ifname=slot.host_ifname,
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": slot.netns_name},
            )
            host = ipr.link_lookup(ifname=slot.host_ifname)[0]
            # no IPv6 on the host end: link-local addresses would be a second way to the host
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{slot.host_ifname}/disable_ipv6", "1")
            ipr.addr("add", index=host, address=slot.host_ip, prefixlen=slot.prefixlen)
            ipr.link("set", index=host, state="up")
        with NetNS(slot.netns_name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            inner = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=inner, address=slot.sandbox_ip, prefixlen=slot.prefixlen)
            ns.link("set", index=inner, state="up")
            ns.route("add", dst="default", gateway=slot.host_ip)
    except BaseException:
        remove(slot)
        raise


def remove(slot: Slot) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=slot.host_ifname):
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=index)
    if Path(slot.netns_path).exists():
        with contextlib.suppress(OSError):
            netns.remove(slot.netns_name)


def existing_netns() -> list[str]:
    return list(netns.listnetns())


def existing_ifnames() -> list[str]:
    with IPRoute() as ipr:
        return [str(link.get("ifname")) for link in ipr.link("dump")]
