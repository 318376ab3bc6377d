"""Host-side nftables rules for all sandboxes of one Atoll instance.

Enforced on the host end of each veth, so nothing inside a sandbox (root included) can lift them,
whatever the runtime backend:
- a sandbox reaches nothing on the host itself (control plane, router, host services): only
  replies to connections the host opened (the router, health checks) come back in;
- sandboxes never reach each other;
- link-local / cloud-metadata ranges and operator deny ranges are dropped in every mode;
- everything else is forwarded and masqueraded (the allow-all default).
"""

from __future__ import annotations

from collections.abc import Sequence

from atoll.runtime._proc import run

ALWAYS_DENIED_V4 = ("169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
ALWAYS_DENIED_V6 = ("fe80::/10", "fd00:ec2::254/128", "ff00::/8")


def table_name(instance: str) -> str:
    return f"atoll_{instance}"


def ruleset(*, instance: str, subnet: str, iface_prefix: str, deny_cidrs: Sequence[str] = ()) -> str:
    table = table_name(instance)
    ifaces = f'"{iface_prefix}*"'
    deny4 = ", ".join([*ALWAYS_DENIED_V4, *(c for c in deny_cidrs if ":" not in c)])
    deny6 = ", ".join([*ALWAYS_DENIED_V6, *(c for c in deny_cidrs if ":" in c)])
    return f"""
table inet {table}
delete table inet {table}
table inet {table} {{
    set deny4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {deny4} }} }}
    set deny6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {deny6} }} }}

    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname {ifaces} ct state established,related accept
        iifname {ifaces} counter drop comment "sandbox to host"
    }}

    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname {ifaces} oifname {ifaces} counter drop comment "sandbox to sandbox"
        oifname {ifaces} ct state established,related accept
        oifname {ifaces} counter drop comment "unsolicited traffic into a sandbox"
        iifname {ifaces} ip daddr @deny4 counter drop comment "denied range"
        iifname {ifaces} ip6 daddr @deny6 counter drop comment "denied range"
        iifname {ifaces} meta nfproto ipv6 counter drop comment "sandboxes have no IPv6 egress"
        iifname {ifaces} ip saddr != {subnet} counter drop comment "spoofed source"
        iifname {ifaces} accept
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != {ifaces} masquerade
    }}
}}
"""


async def apply(*, instance: str, subnet: str, iface_prefix: str, deny_cidrs: Sequence[str] = ()) -> None:
    text = ruleset(instance=instance, subnet=subnet, iface_prefix=iface_prefix, deny_cidrs=deny_cidrs)
    await run(["nft", "-f", "-"], input=text.encode(), timeout=30)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


async def remove(instance: str) -> None:
    await run(["nft", "delete", "table", "inet", table_name(instance)], timeout=30, check=False)
