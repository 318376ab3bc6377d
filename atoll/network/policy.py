"""A sandbox's egress policy: the request's ``network_policy`` as pydantic validates it
(``NetworkPolicy`` in atoll._policy: the one frozen type the API, the create parameters and the
store's rows carry), compiled into the ``EgressPolicy`` the resolver, the proxy and the nftables
rules use; and the address guard every egress path shares. Pure: no I/O.

Semantics (wire-protocol section 3):
- omitted or ``allow-all``: everything but the always-denied ranges; ``transforms`` still apply;
- ``deny-all``: nothing (names resolve to nothing, every packet is refused);
- ``custom``: only ``allow_cidrs``, ``allow_domains`` and the transforms' domains.

A domain pattern is an exact name (``api.example.com``) or ``*.`` followed by a name, which
matches any name below it, at any depth (``a.example.com``, ``b.a.example.com``), never the
name itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from atoll._policy import Mode, NetworkPolicy, Transform, check_domain

__all__ = [
    "ALWAYS_FORBIDDEN_V4", "PRIVATE_V4", "AddressGuard", "EgressPolicy", "Mode", "NetworkPolicy",
    "Transform", "TransformRule", "check_domain", "domain_matches", "normalise_name",
]  # fmt: skip

IPv4 = ipaddress.IPv4Address

# Never reachable from a sandbox, whatever its policy (the firewall's always-denied ranges plus
# what only the host itself may use). The sandbox subnet and the host's own addresses are added
# per server by ``AddressGuard``.
# closed in every mode: private ranges (the firewall's PRIVATE_V4)
PRIVATE_V4 = ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15")
ALWAYS_FORBIDDEN_V4 = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


def normalise_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def domain_matches(pattern: str, name: str) -> bool:
    """``api.x.y`` matches only itself; ``*.x.y`` matches every name strictly below ``x.y``."""
    name = normalise_name(name)
    pattern = normalise_name(pattern)
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@dataclass(frozen=True)
class TransformRule:
    """One transform, compiled: what the proxy applies to the requests of a matching name."""

    domain: str
    inject: tuple[tuple[str, str], ...] = ()
    strip: frozenset[str] = frozenset()  # lower-cased header names

    def matches(self, name: str) -> bool:
        return domain_matches(self.domain, name)

    def __repr__(self) -> str:  # the injected values are secrets: never in logs or reprs
        names = [k for k, _ in self.inject]
        return f"TransformRule(domain={self.domain!r}, inject={names!r}, strip={sorted(self.strip)!r})"


@dataclass(frozen=True)
class EgressPolicy:
    """A validated policy, compiled (normalised names, parsed networks): immutable, so one object
    serves the rules, the resolver and the proxy of a sandbox."""

    mode: Mode = "allow-all"
    domains: tuple[str, ...] = ()
    cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    transforms: tuple[TransformRule, ...] = field(default=())

    @classmethod
    def compile(cls, policy: NetworkPolicy | None) -> EgressPolicy:
        """The policy a request's validated ``network_policy`` means (None: allow-all)."""
        if policy is None:
            return cls()
        if policy.mode == "deny-all":
            return cls(mode="deny-all")
        transforms = tuple(
            TransformRule(
                domain=normalise_name(t.domain),
                inject=tuple((t.inject_headers or {}).items()),
                strip=frozenset(h.lower() for h in t.strip_headers or ()),
            )
            for t in policy.transforms or ()
        )
        if policy.mode == "allow-all":
            return cls(mode="allow-all", transforms=transforms)
        return cls(
            mode="custom",
            domains=tuple(normalise_name(d) for d in policy.allow_domains or ()),
            cidrs=tuple(ipaddress.IPv4Network(c, strict=False) for c in policy.allow_cidrs or ()),
            transforms=transforms,
        )

    @property
    def learns_names(self) -> bool:
        """Whether the resolver must record this sandbox's answers (and the proxy see the traffic):
        for domain allow-lists and for transforms."""
        return self.mode == "custom" or bool(self.transforms)

    def allows_name(self, name: str) -> bool:
        if self.mode == "allow-all":
            return True
        if self.mode == "deny-all":
            return False
        return any(domain_matches(p, name) for p in self.domains) or self.transform_for(name) is not None

    def transform_for(self, name: str) -> TransformRule | None:
        for transform in self.transforms:
            if transform.matches(name):
                return transform
        return None

    def names(self, address: IPv4) -> bool:
        """Whether the policy's own ``allow_cidrs`` name the address (what a private range the
        operator opened needs: ``allow-all`` names nothing)."""
        return self.mode == "custom" and any(address in net for net in self.cidrs)

    def cidr_allows(self, address: IPv4) -> bool:
        if self.mode == "allow-all":
            return True
        return any(address in net for net in self.cidrs)

    def secrets(self) -> list[str]:
        return [value for t in self.transforms for _, value in t.inject if value]


class AddressGuard:
    """Addresses no egress path may ever reach for a sandbox: the always-denied ranges, the
    operator's deny ranges, the sandbox subnet and the host's own addresses; and the closed ones
    (private ranges, the networks the host is on) but for those the operator opened, which only a
    policy naming them reaches (``closed_to``). The resolver never learns forbidden addresses and
    the proxy never connects to them (the firewall refuses them too)."""

    def __init__(
        self,
        *,
        subnet: str,
        deny_cidrs: Iterable[str] = (),
        local: Iterable[str] = (),
        closed: Iterable[str] = PRIVATE_V4,
        opened: Iterable[str] = (),
    ) -> None:
        nets = [ipaddress.IPv4Network(c) for c in ALWAYS_FORBIDDEN_V4]
        nets.append(ipaddress.IPv4Network(subnet))
        nets += [ipaddress.IPv4Network(c, strict=False) for c in deny_cidrs if ":" not in c]
        self.networks = tuple(nets)
        self.closed = tuple(ipaddress.IPv4Network(c, strict=False) for c in closed)
        self.opened = tuple(ipaddress.IPv4Network(c, strict=False) for c in opened)
        self.local: frozenset[IPv4] = frozenset(ipaddress.IPv4Address(a) for a in local)

    def with_local(self, local: Iterable[str], host_networks: Iterable[str] = ()) -> AddressGuard:
        """This guard with the host's current addresses, and the networks it is on closed too."""
        guard = AddressGuard.__new__(AddressGuard)
        guard.networks = self.networks
        guard.opened = self.opened
        extra = tuple(ipaddress.IPv4Network(c, strict=False) for c in host_networks)
        guard.closed = self.closed + tuple(n for n in extra if n not in self.closed)
        guard.local = frozenset(ipaddress.IPv4Address(a) for a in local)
        return guard

    def is_closed(self, address: IPv4) -> bool:
        """Private (or the host's network), opened by the operator or not."""
        return any(address in net for net in self.closed)

    def forbidden(self, address: IPv4) -> bool:
        if address in self.local or any(address in net for net in self.networks):
            return True
        return self.is_closed(address) and not any(address in net for net in self.opened)

    def closed_to(self, policy: EgressPolicy, address: IPv4) -> bool:
        """Whether a sandbox with ``policy`` must not reach ``address``."""
        return self.forbidden(address) or (self.is_closed(address) and not policy.names(address))
