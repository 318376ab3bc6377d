"""One attached sandbox as the resolver and the proxy see it: its compiled policy, the names
its DNS answers taught (so the proxy and the firewall let their addresses through), its counters
and the TLS contexts its CA issues for transforms."""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from atoll.network import egress_trust
from atoll.network.ca import CertificateAuthority
from atoll.network.policy import EgressPolicy

if TYPE_CHECKING:
    from atoll.network.egress import Attachment

MIN_LEARNED_TIMEOUT = 60  # seconds an address stays allowed after an answer, whatever its TTL


class Learner(Protocol):
    """Opens learned addresses in the firewall (``EgressService.learn``)."""

    async def learn(self, state: SandboxEgress, addresses: Sequence[tuple[str, int]]) -> None: ...


@dataclass
class Stats:
    dns_allowed: int = 0
    dns_denied: int = 0
    proxied_allowed: int = 0
    proxied_denied: int = 0
    transformed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


class SandboxEgress:
    """One attached sandbox, as the resolver and the proxy see it."""

    def __init__(self, service: Learner, attachment: Attachment, policy: EgressPolicy) -> None:
        self._service = service
        self.sandbox_id = attachment.sandbox_id
        self.org_id = attachment.org_id
        self.slot = attachment.slot
        self.policy = policy
        self.ca_dir = attachment.sandbox_dir / egress_trust.CA_DIR
        self.stats = Stats()
        self.learned: dict[ipaddress.IPv4Address, dict[str, float]] = {}
        self._contexts: dict[str, tuple[ssl.SSLContext, float]] = {}
        self._ca: CertificateAuthority | None = None
        self._pruned = time.monotonic()

    # resolver side
    def dns_answered(self, *, allowed: bool) -> None:
        if allowed:
            self.stats.dns_allowed += 1
        else:
            self.stats.dns_denied += 1

    async def learn(self, name: str, addresses: Sequence[tuple[ipaddress.IPv4Address, int]]) -> None:
        """Remember that ``name`` resolved to ``addresses`` and open them in the firewall; the
        resolver awaits this before it answers, so a connection right after the answer passes."""
        now = time.monotonic()
        if now - self._pruned > 60:
            self._prune(now)
        updates = []
        for address, ttl in addresses:
            timeout = max(ttl, MIN_LEARNED_TIMEOUT)
            names = self.learned.setdefault(address, {})
            known = max(names.values(), default=0.0)
            names[name] = max(names.get(name, 0.0), now + timeout)
            if now + timeout > known + 1:
                updates.append((str(address), timeout))
        if updates:
            await self._service.learn(self, updates)

    def _prune(self, now: float) -> None:
        self._pruned = now
        for address in list(self.learned):
            names = {n: t for n, t in self.learned[address].items() if t > now}
            if names:
                self.learned[address] = names
            else:
                del self.learned[address]

    # proxy side
    def learned_for(self, name: str, address: ipaddress.IPv4Address) -> bool:
        return self.learned.get(address, {}).get(name, 0.0) > time.monotonic()

    def learned_any(self, address: ipaddress.IPv4Address) -> bool:
        now = time.monotonic()
        return any(t > now for t in self.learned.get(address, {}).values())

    def connection(self, *, allowed: bool, transformed: bool = False) -> None:
        if allowed:
            self.stats.proxied_allowed += 1
            self.stats.transformed += transformed
        else:
            self.stats.proxied_denied += 1

    def traffic(self, *, sent: int = 0, received: int = 0) -> None:
        self.stats.bytes_sent += sent
        self.stats.bytes_received += received

    def server_context(self, name: str) -> ssl.SSLContext:
        cached = self._contexts.get(name)
        if cached is not None and cached[1] > time.time() + 3600:
            return cached[0]
        if self._ca is None:
            self._ca = CertificateAuthority.load(self.ca_dir)
        issued = self._ca.issue(name)
        path = self.ca_dir / f"leaf-{name}.pem"
        path.write_bytes(issued.cert_pem + issued.key_pem)
        path.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(path)
        context.set_alpn_protocols(["http/1.1"])
        self._contexts[name] = (context, issued.not_after.timestamp())
        return context
