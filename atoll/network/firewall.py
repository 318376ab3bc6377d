"""Host-side nftables rules for all sandboxes of one Atoll instance.

Enforced on the host end of each veth, so nothing inside a sandbox (root included) can lift them,
whatever the runtime backend:
- a sandbox reaches nothing on the host itself (control plane, router, host services): only
  replies to connections the host opened (the router, health checks) come back in;
- sandboxes never reach each other;
- link-local / cloud-metadata ranges and operator deny ranges are dropped in every mode;
- everything else goes to the sandbox's own egress policy chain (``egress_rules``), attached when
  the sandbox boots; a sandbox without one has no egress (fail closed). What a policy allows is
  masqueraded. Refusals are counted per sandbox and rejected (TCP reset, ICMP admin-prohibited).
- DNS to the host end of a veth goes to Atoll's resolver, and TCP to addresses a sandbox learned
  from it goes to the egress proxy (``redirect``); from a sandbox, those two ports accept only
  redirected traffic (both services answer nobody but sandboxes).
"""

from __future__ import annotations

from collections.abc import Sequence

from atoll.runtime._proc import run

ALWAYS_DENIED_V4 = ("169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
ALWAYS_DENIED_V6 = ("fe80::/10", "fd00:ec2::254/128", "ff00::/8")


def table_name(instance: str) -> str:
    return f"atoll_{instance}"


def ruleset(
    *,
    instance: str,
    subnet: str,
    iface_prefix: str,
    deny_cidrs: Sequence[str] = (),
    dns_port: int | None = None,
    proxy_port: int | None = None,
) -> str:
    table = table_name(instance)
    ifaces = f'"{iface_prefix}*"'
    deny4 = ", ".join([*ALWAYS_DENIED_V4, *(c for c in deny_cidrs if ":" not in c)])
    deny6 = ", ".join([*ALWAYS_DENIED_V6, *(c for c in deny_cidrs if ":" in c)])
    ports = ", ".join(str(p) for p in (dns_port, proxy_port) if p)
    dns_redirect = (
        f"iifname {ifaces} fib daddr type local meta l4proto {{ tcp, udp }} th dport 53"
        f" redirect to :{dns_port}"
        if dns_port
        else ""
    )
    # No port-based drop for other interfaces: the table outlives the server, and a stale rule on
    # a port the kernel later hands out as a client port would drop that connection's replies.
    # The resolver and the proxy refuse any peer that is not a sandbox themselves.
    services = (
        f"iifname {ifaces} ct status dnat meta l4proto {{ tcp, udp }} th dport {{ {ports} }} accept"
        if ports
        else ""
    )
    return f"""
table inet {table}
delete table inet {table}
table inet {table} {{
    set deny4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {deny4} }} }}
    set deny6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {deny6} }} }}
    map egress_out {{ type ifname : verdict; }}
    map egress_in {{ type ifname : verdict; }}
    map egress_deny {{ type ifname : verdict; }}
    map egress_nat {{ type ifname : verdict; }}

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
    }}

    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {ifaces} oifname {ifaces} goto deny comment "sandbox to sandbox"
        oifname {ifaces} ct state established,related oifname vmap @egress_in
        oifname {ifaces} ct state established,related accept
        oifname {ifaces} counter drop comment "unsolicited traffic into a sandbox"
        iifname {ifaces} ip daddr @deny4 goto deny comment "denied range"
        iifname {ifaces} ip6 daddr @deny6 goto deny comment "denied range"
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
) -> None:
    text = ruleset(
        instance=instance,
        subnet=subnet,
        iface_prefix=iface_prefix,
        deny_cidrs=deny_cidrs,
        dns_port=dns_port,
        proxy_port=proxy_port,
    )
    await run(["nft", "-f", "-"], input=text.encode(), timeout=30)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


async def remove(instance: str) -> None:
    await run(["nft", "delete", "table", "inet", table_name(instance)], timeout=30, check=False)
