"""Host-side nftables rules for all sandboxes of one Atoll instance.

Enforced on the host end of each veth, so nothing inside a sandbox (root included) can lift them,
whatever the runtime backend:
- a sandbox reaches nothing on the host itself (control plane, router, host services): only
  replies to connections the host opened (the router, health checks) come back in;
- sandboxes never reach each other;
- link-local / cloud-metadata ranges and operator deny ranges are dropped in every mode;
- private ranges (``PRIVATE_V4``: RFC 1918, shared address space, benchmarking) and the networks
  the host itself is on (set ``closed4``, kept current by the egress service) are dropped in every
  mode, except the ranges the operator opened (``--allow-private-cidr``, set ``open4``), which a
  sandbox reaches only when its own policy names them (``egress_rules``);
- everything else goes to the sandbox's own egress policy chain (``egress_rules``), attached when
  the sandbox boots; a sandbox without one has no egress (fail closed). What a policy allows is
  masqueraded. Refusals are counted per sandbox and rejected (TCP reset, ICMP admin-prohibited).
- DNS to the host end of a veth goes to Atoll's resolver, and TCP to addresses a sandbox learned
  from it goes to the egress proxy (``dnat`` to the service address, ``service_address``); from a
  sandbox, those two ports accept only translated traffic (both services answer nobody but
  sandboxes). The services listen on the service address only, a /32 on the host's loopback that
  nothing but that translation reaches: packets for it from any other interface are dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from atoll.network.policy import PRIVATE_V4
from atoll.runtime.commands import run

ALWAYS_DENIED_V4 = ("169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
ALWAYS_DENIED_V6 = ("fe80::/10", "fc00::/7", "fd00:ec2::254/128", "ff00::/8")


def service_address(subnet: str) -> str:
    """Where the resolver and the egress proxy listen: the first address of slot 0 of the
    sandbox subnet (which no sandbox uses, ``addressing``), on the host's loopback."""
    return str(ipaddress.IPv4Network(subnet).network_address + 1)


def _elements(cidrs: Sequence[str]) -> str:
    return f"elements = {{ {', '.join(cidrs)} }}" if cidrs else ""


def table_name(instance: str) -> str:
    return f"atoll_{instance}"


# DNS to the resolver, per sandbox (source address), dropped before conntrack past these: a
# flood costs neither conntrack entries nor the control plane's event loop (resolver.py has the
# same rate, and caps TCP connections)
DNS_QUERY_RATE_PER_S = 200
DNS_QUERY_BURST = 400
DNS_TCP_SYN_RATE_PER_S = 20
DNS_TCP_SYN_BURST = 40


def ruleset(
    *,
    instance: str,
    subnet: str,
    iface_prefix: str,
    deny_cidrs: Sequence[str] = (),
    dns_port: int | None = None,
    proxy_port: int | None = None,
    open_cidrs: Sequence[str] = (),
    closed_cidrs: Sequence[str] = PRIVATE_V4,
) -> str:
    table = table_name(instance)
    service = service_address(subnet)
    ifaces = f'"{iface_prefix}*"'
    deny4 = ", ".join([*ALWAYS_DENIED_V4, *(c for c in deny_cidrs if ":" not in c)])
    deny6 = ", ".join([*ALWAYS_DENIED_V6, *(c for c in deny_cidrs if ":" in c)])
    ports = ", ".join(str(p) for p in (dns_port, proxy_port) if p)
    dns_redirect = (
        f"iifname {ifaces} fib daddr type local meta l4proto {{ tcp, udp }} th dport 53"
        f" dnat ip to {service}:{dns_port}"
        if dns_port
        else ""
    )
    udp_limit = f"limit rate over {DNS_QUERY_RATE_PER_S}/second burst {DNS_QUERY_BURST} packets"
    syn_limit = f"limit rate over {DNS_TCP_SYN_RATE_PER_S}/second burst {DNS_TCP_SYN_BURST} packets"
    syn = "tcp flags & (syn|ack) == syn"
    to_resolver = f"iifname {ifaces} fib daddr type local"
    dns_limit = (
        f"""
    set dns_udp_rate {{ type ipv4_addr; flags dynamic; timeout 1m; size 65536; }}
    set dns_tcp_rate {{ type ipv4_addr; flags dynamic; timeout 1m; size 65536; }}

    chain dns_limit {{
        type filter hook prerouting priority raw; policy accept;
        {to_resolver} udp dport 53 update @dns_udp_rate {{ ip saddr {udp_limit} }} drop
        {to_resolver} tcp dport 53 {syn} update @dns_tcp_rate {{ ip saddr {syn_limit} }} drop
    }}"""
        if dns_port
        else ""
    )
    # No port-based drop for other interfaces: the table outlives the server, and a stale rule on
    # a port the kernel later hands out as a client port would drop that connection's replies.
    # The resolver and the proxy refuse any peer that is not a sandbox themselves.
    services = (
        f"iifname {ifaces} ct status dnat ip daddr {service} meta l4proto {{ tcp, udp }}"
        f" th dport {{ {ports} }} accept"
        if ports
        else ""
    )
    return f"""
table inet {table}
delete table inet {table}
table inet {table} {{
    set deny4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {deny4} }} }}
    set deny6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {deny6} }} }}
    set closed4 {{ type ipv4_addr; flags interval; auto-merge; {_elements(closed_cidrs)} }}
    set open4 {{ type ipv4_addr; flags interval; auto-merge; {_elements(open_cidrs)} }}
    map egress_out {{ type ifname : verdict; }}
    map egress_in {{ type ifname : verdict; }}
    map egress_deny {{ type ifname : verdict; }}
    map egress_nat {{ type ifname : verdict; }}
{dns_limit}

    chain deny {{
        iifname vmap @egress_deny
        meta l4proto tcp reject with tcp reset
        reject with icmpx admin-prohibited
    }}

    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {dns_redirect}
        iifname {ifaces} fib daddr type local return
        iifname {ifaces} ip daddr @deny4 return
        iifname {ifaces} ip daddr {subnet} return
        iifname {ifaces} iifname vmap @egress_nat
    }}

    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {ifaces} ct state established,related accept
        {services}
        iifname {ifaces} goto deny comment "sandbox to host"
        iifname != "lo" ip daddr {service} drop comment "sandbox services, from elsewhere"
    }}

    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {ifaces} oifname {ifaces} goto deny comment "sandbox to sandbox"
        oifname {ifaces} ct state established,related oifname vmap @egress_in
        oifname {ifaces} ct state established,related accept
        oifname {ifaces} counter drop comment "unsolicited traffic into a sandbox"
        iifname {ifaces} ip daddr @deny4 goto deny comment "denied range"
        iifname {ifaces} ip6 daddr @deny6 goto deny comment "denied range"
        iifname {ifaces} ip daddr @closed4 ip daddr != @open4 goto deny comment "private range"
        iifname {ifaces} meta nfproto ipv6 goto deny comment "sandboxes have no IPv6 egress"
        iifname {ifaces} ip saddr != {subnet} counter drop comment "spoofed source"
        iifname {ifaces} iifname vmap @egress_out
        iifname {ifaces} goto deny comment "no egress policy attached"
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != {ifaces} masquerade
    }}
}}
"""


async def apply(
    *,
    instance: str,
    subnet: str,
    iface_prefix: str,
    deny_cidrs: Sequence[str] = (),
    dns_port: int | None = None,
    proxy_port: int | None = None,
    open_cidrs: Sequence[str] = (),
    closed_cidrs: Sequence[str] = PRIVATE_V4,
) -> None:
    text = ruleset(
        instance=instance,
        subnet=subnet,
        iface_prefix=iface_prefix,
        deny_cidrs=deny_cidrs,
        dns_port=dns_port,
        proxy_port=proxy_port,
        open_cidrs=open_cidrs,
        closed_cidrs=closed_cidrs,
    )
    await run(["nft", "-f", "-"], input=text.encode(), timeout=30)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


async def remove(instance: str) -> None:
    await run(["nft", "delete", "table", "inet", table_name(instance)], timeout=30, check=False)


def closed_update(instance: str, cidrs: Sequence[str]) -> str:
    """One transaction that replaces the ``closed4`` set (the private ranges and the host's
    networks, which change with its interfaces)."""
    t = f"inet {table_name(instance)}"
    return f"flush set {t} closed4\nadd element {t} closed4 {{ {', '.join(cidrs)} }}\n"
