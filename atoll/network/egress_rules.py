"""Per-sandbox nftables objects: the text of one attach batch and one detach batch. Pure: no I/O.

The instance table (``firewall.ruleset``) holds four verdict maps keyed by the host end of each
sandbox's veth. Attaching a sandbox adds one element to each and the chains, sets and named
counters they jump to, all prefixed ``s<slot>_``:

    egress_out  -> s<N>_out   the policy: new connections from the sandbox
    egress_in   -> s<N>_in    counts replies to the sandbox
    egress_deny -> s<N>_deny  counts what is refused (then the ``deny`` chain rejects it)
    egress_nat  -> s<N>_nat   TCP to addresses learned from DNS goes to the egress proxy

Counters: ``s<N>_tx``/``s<N>_rx`` (allowed bytes out/in), ``s<N>_new`` (allowed connections),
``s<N>_deny`` (refused packets and bytes), ``s<N>_deny_new`` (refused connection attempts).
Sets: ``s<N>_cidr`` (the policy's CIDRs) and ``s<N>_dns`` (learned addresses, with timeouts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from atoll.network.policy import EgressPolicy

MAPS = ("egress_out", "egress_in", "egress_deny", "egress_nat")
COUNTERS = ("tx", "rx", "new", "deny", "deny_new")
CHAINS = ("out", "ok", "in", "deny", "nat")  # in deletion order: "out" jumps to "ok"
SETS = ("cidr", "dns")
_SLOT_OBJECT = re.compile(r"^s(\d+)_[a-z_]+$")


def prefix(index: int) -> str:
    return f"s{index}_"


def slot_of_object(name: str) -> int | None:
    match = _SLOT_OBJECT.match(name)
    return int(match.group(1)) if match else None


def attach(
    table: str, *, index: int, ifname: str, policy: EgressPolicy, proxy_port: int, service: str = ""
) -> str:
    """``service``: the address the proxy listens on (``firewall.service_address``); empty
    redirects to the port on the veth's own address instead."""
    p = f"inet {table} {prefix(index)}"
    t = f"inet {table}"
    lines = [f"add counter {p}{name}" for name in COUNTERS]
    lines += [
        f"add chain {p}ok",
        f'add rule {p}ok counter name "{prefix(index)}tx"',
        f'add rule {p}ok ct state new counter name "{prefix(index)}new"',
        f"add rule {p}ok accept",
        f"add chain {p}in",
        f'add rule {p}in counter name "{prefix(index)}rx" accept',
        f"add chain {p}deny",
        f'add rule {p}deny counter name "{prefix(index)}deny"',
        f'add rule {p}deny ct state new counter name "{prefix(index)}deny_new"',
        f"add chain {p}out",
    ]
    if policy.mode == "allow-all":
        # private ranges, even those the operator opened: only a policy that names one reaches it
        lines.append(f"add rule {p}out ip daddr @closed4 goto deny")
        lines.append(f"add rule {p}out goto {prefix(index)}ok")
    elif policy.mode == "deny-all":
        lines.append(f"add rule {p}out goto deny")
    else:
        lines.append(f"add rule {p}out ct state established,related goto {prefix(index)}ok")
        if policy.cidrs:
            elements = ", ".join(str(c) for c in policy.cidrs)
            lines.append(f"add set {p}cidr {{ type ipv4_addr; flags interval; auto-merge; }}")
            lines.append(f"add element {p}cidr {{ {elements} }}")
            lines.append(f"add rule {p}out ip daddr @{prefix(index)}cidr goto {prefix(index)}ok")
        lines.append(f"add rule {p}out goto deny")
    if policy.learns_names:
        to_proxy = f"dnat ip to {service}:{proxy_port}" if service else f"redirect to :{proxy_port}"
        lines += [
            f"add set {p}dns {{ type ipv4_addr; flags timeout; }}",
            f"add chain {p}nat",
            f"add rule {p}nat meta l4proto tcp ip daddr @{prefix(index)}dns {to_proxy}",
            f'add element {t} egress_nat {{ "{ifname}" : jump {prefix(index)}nat }}',
        ]
    lines += [
        f'add element {t} egress_out {{ "{ifname}" : jump {prefix(index)}out }}',
        f'add element {t} egress_in {{ "{ifname}" : jump {prefix(index)}in }}',
        f'add element {t} egress_deny {{ "{ifname}" : jump {prefix(index)}deny }}',
    ]
    return "\n".join(lines) + "\n"


def objects(policy: EgressPolicy) -> dict[str, tuple[str, ...]]:
    """What ``attach`` creates for ``policy``: maps holding an element, chains, sets, counters."""
    learns = policy.learns_names
    return {
        "maps": tuple(m for m in MAPS if m != "egress_nat" or learns),
        "chains": tuple(c for c in CHAINS if c != "nat" or learns),
        "sets": (("cidr",) if policy.mode == "custom" and policy.cidrs else ())
        + (("dns",) if learns else ()),
        "counters": COUNTERS,
    }


def detach(
    table: str,
    *,
    index: int,
    ifname: str,
    maps: Iterable[str],
    chains: Iterable[str],
    sets: Iterable[str],
    counters: Iterable[str],
) -> str:
    """Remove what exists (chain, set and counter names without the slot prefix): map elements
    first, then chains (flushed, so none references another), then sets and counters."""
    p = f"inet {table} {prefix(index)}"
    lines = [f'delete element inet {table} {m} {{ "{ifname}" }}' for m in maps]
    wanted = set(chains)
    chains = [c for c in CHAINS if c in wanted]
    lines += [f"flush chain {p}{c}" for c in chains]
    lines += [f"delete chain {p}{c}" for c in chains]
    lines += [f"delete set {p}{s}" for s in sets]
    lines += [f"delete counter {p}{c}" for c in counters]
    return "\n".join(lines) + "\n"


def learn(table: str, *, index: int, addresses: Iterable[tuple[str, int]]) -> str:
    """Add (or refresh) learned addresses with a timeout in seconds. ``add`` alone does not
    refresh an existing element's timeout on older kernels, so each is added, deleted and
    added again in the same transaction."""
    s = f"inet {table} {prefix(index)}dns"
    lines = []
    for address, timeout in addresses:
        lines += [
            f"add element {s} {{ {address} timeout {timeout}s }}",
            f"delete element {s} {{ {address} }}",
            f"add element {s} {{ {address} timeout {timeout}s }}",
        ]
    return "\n".join(lines) + "\n"
