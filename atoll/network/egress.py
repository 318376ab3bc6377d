"""Egress policy enforcement for one Atoll instance: the per-sandbox nftables objects, the DNS
resolver, the egress proxy and the counters, behind the hooks the sandbox manager calls.

    preinstall(slot, p)  for a warm sandbox (nothing runs in it): policy p's rules, no state yet
    attach(Attachment)   at boot, before the sandbox's first process: rules + resolver/proxy state
    detach(id, slot)     at stop/delete/failed boot: everything per-sandbox is removed
    reconcile(adopted)   at start-up: re-attach surviving sandboxes, remove any other s<N>_ object

The instance table is rebuilt at start-up, so after a crash nothing stale survives it; what a
sandbox had learned from DNS is lost then (it resolves again). See docs/egress.md.

Beside it: ``egress_sandbox`` (one attached sandbox as the resolver and proxy see it),
``egress_trust`` (the sandbox's CA for transforms), ``egress_slots`` (a slot's objects found and
removed by listing the table), ``egress_rules`` (the nftables text)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll._tasks import cancel_and_wait
from atoll.network import egress_rules, egress_slots, egress_trust, hostnet
from atoll.network.addressing import Slot
from atoll.network.egress_sandbox import SandboxEgress, Stats
from atoll.network.firewall import closed_update, service_address, table_name
from atoll.network.nftables import Nft, NftError
from atoll.network.policy import PRIVATE_V4, AddressGuard, EgressPolicy
from atoll.network.proxy import EgressProxy
from atoll.network.resolver import Resolver, parse_upstream

__all__ = ["Attachment", "EgressConfig", "EgressService", "SandboxEgress", "Stats"]

log = logging.getLogger("atoll.egress")

LOCAL_ADDRESSES_TTL = 30.0


@dataclass(frozen=True, kw_only=True)
class EgressConfig:
    instance: str
    subnet: str
    deny_cidrs: tuple[str, ...] = ()
    allow_private_cidrs: tuple[str, ...] = ()  # private ranges a policy may name (firewall.PRIVATE_V4)
    upstreams: tuple[str, ...] = ()  # "ip" or "ip:port"
    upstream_ca_bundle: Path | None = None  # verifies upstream TLS for transforms; None: system store


@dataclass(frozen=True, kw_only=True)
class Attachment:
    sandbox_id: str
    org_id: str
    policy: EgressPolicy  # the sandbox's NetworkPolicy, compiled (EgressPolicy.compile)
    slot: Slot
    sandbox_dir: Path


class EgressService:
    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self.table = table_name(config.instance)
        self._nft: Nft | None = None
        self._by_ip: dict[str, SandboxEgress] = {}
        self._by_id: dict[str, SandboxEgress] = {}
        self._installed: dict[int, EgressPolicy] = {}  # slot -> rules in place, no sandbox attached
        self._base_guard = AddressGuard(
            subnet=config.subnet, deny_cidrs=config.deny_cidrs, opened=config.allow_private_cidrs
        )
        self.service_address = service_address(config.subnet)
        self.host_networks: tuple[str, ...] = ()
        self._closed_applied: tuple[str, ...] | None = None
        self._guard = self._base_guard
        self._refresher: asyncio.Task[None] | None = None
        context = ssl.create_default_context(
            cafile=str(config.upstream_ca_bundle) if config.upstream_ca_bundle else None
        )
        context.set_alpn_protocols(["http/1.1"])
        self.resolver = Resolver(
            upstreams=[parse_upstream(u) for u in config.upstreams], lookup=self._by_ip.get, guard=self.guard
        )
        self.proxy = EgressProxy(lookup=self._by_ip.get, guard=self.guard, upstream_tls=context)

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    @property
    def dns_port(self) -> int:
        return self.resolver.port

    @property
    def proxy_port(self) -> int:
        return self.proxy.port

    async def start(self) -> None:
        """Bind the resolver and the proxy to the service address (added to the loopback) and
        keep the guard current. ``update_closed`` must follow once the firewall table exists."""
        await asyncio.to_thread(hostnet.loopback_address, self.service_address, present=True)
        await self._refresh_local_addresses()
        self._refresher = asyncio.create_task(self._refresh_forever())
        await self.resolver.start(self.service_address)
        await self.proxy.start(self.service_address)

    async def close(self) -> None:
        await cancel_and_wait(self._refresher)
        await self.proxy.close()
        await self.resolver.close()
        try:
            await asyncio.to_thread(hostnet.loopback_address, self.service_address, present=False)
        except Exception:
            log.exception("could not remove the service address %s", self.service_address)
        if self._nft is not None:
            self._nft.close()

    @property
    def closed_cidrs(self) -> tuple[str, ...]:
        """What the firewall closes: private ranges and the networks the host is on."""
        return (*PRIVATE_V4, *self.host_networks)

    def update_closed(self) -> None:
        """Bring the firewall's ``closed4`` set up to date with the host's networks."""
        closed = self.closed_cidrs
        if closed != self._closed_applied:
            self.nft.run(closed_update(self.config.instance, closed))
            self._closed_applied = closed

    def guard(self) -> AddressGuard:
        return self._guard

    async def _refresh_local_addresses(self) -> None:
        """The host's own addresses join the guard, and the networks it is on the closed ranges
        (refreshed in the background)."""
        subnet = self.config.subnet
        local, networks = await asyncio.to_thread(hostnet.addresses_and_networks, subnet, PRIVATE_V4)
        self.host_networks = tuple(networks)
        self._guard = self._base_guard.with_local(local, self.host_networks)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(LOCAL_ADDRESSES_TTL)
            try:
                await self._refresh_local_addresses()
                await asyncio.to_thread(self.update_closed)
            except Exception:
                log.exception("could not list the host's addresses")

    # manager hooks ---------------------------------------------------------------------------
    def resolv_conf(self, slot: Slot) -> str:
        return f"nameserver {slot.host_ip}\noptions timeout:2 attempts:2\n"

    @staticmethod
    def sandbox_env(policy: EgressPolicy) -> dict[str, str]:
        return egress_trust.sandbox_env(policy)

    @staticmethod
    def prepare(
        policy: EgressPolicy, sandbox_dir: Path, template_rootfs: Path | None, snapshot_dir: Path | None
    ) -> None:
        """``snapshot_dir``: the snapshot the sandbox was restored from, whose CA it may keep."""
        inherited = snapshot_dir / egress_trust.CA_DIR if snapshot_dir is not None else None
        egress_trust.install_ca(policy, sandbox_dir, template_rootfs, inherited)

    def _rules(self, slot: Slot, policy: EgressPolicy) -> str:
        return egress_rules.attach(
            self.table,
            index=slot.index,
            ifname=slot.host_ifname,
            policy=policy,
            proxy_port=self.proxy_port,
            service=self.service_address,
        )

    async def preinstall(self, slot: Slot, policy: EgressPolicy | None) -> None:
        """Put a policy's rules in place for a slot no sandbox is attached to yet (a warm
        sandbox's: nothing runs in it to use them). An ``attach`` of the same policy to that slot
        then only registers the sandbox; another policy replaces them; ``detach`` removes them."""
        policy = policy or EgressPolicy()  # None: allow-all
        await self._install(slot, self._rules(slot, policy))
        self._installed[slot.index] = policy

    async def _install(self, slot: Slot, batch: str) -> None:
        # libnftables blocks for milliseconds (the kernel validates the ruleset's jumps and commits
        # the transaction): in a thread, so that the event loop serves other requests meanwhile
        try:
            await asyncio.to_thread(self.nft.run, batch)
        except NftError:
            # a leftover of a failed attach
            await asyncio.to_thread(self._remove_slot_objects, slot.index, slot.host_ifname)
            await asyncio.to_thread(self.nft.run, batch)

    async def attach(self, attachment: Attachment) -> None:
        policy = attachment.policy
        slot = attachment.slot
        installed = self._installed.pop(slot.index, None)
        batch = self._rules(slot, policy)
        if installed is None:
            await self._install(slot, batch)
        elif self._rules(slot, installed) != batch:  # another policy's rules: replaced
            await self._remove_installed(slot, installed)
            await self._install(slot, batch)
        state = SandboxEgress(self, attachment, policy)
        self._by_ip[slot.sandbox_ip] = state
        self._by_id[attachment.sandbox_id] = state

    async def detach(self, sandbox_id: str, slot: Slot) -> None:
        state = self._by_id.pop(sandbox_id, None)
        if state is not None and self._by_ip.get(state.slot.sandbox_ip) is state:
            del self._by_ip[state.slot.sandbox_ip]
        installed = self._installed.pop(slot.index, None)
        if state is not None and state.slot.index == slot.index:
            await self._remove_installed(slot, state.policy)
        elif installed is not None:
            await self._remove_installed(slot, installed)
        else:
            await asyncio.to_thread(self._remove_slot_objects, slot.index, slot.host_ifname)

    async def _remove_installed(self, slot: Slot, policy: EgressPolicy) -> None:
        """Remove the objects ``policy``'s rules made for ``slot`` (all of them, whatever fails)."""
        batch = egress_rules.detach(
            self.table, index=slot.index, ifname=slot.host_ifname, **egress_rules.objects(policy)
        )
        try:
            await asyncio.to_thread(self.nft.run, batch)
        except NftError:
            await asyncio.to_thread(self._remove_slot_objects, slot.index, slot.host_ifname)

    async def reconcile(self, adopted: Sequence[Attachment]) -> list[str]:
        """Start-up: remove every per-sandbox object whose slot no adopted sandbox holds, and
        attach the adopted ones afresh. Returns what was removed."""
        keep = {a.slot.index for a in adopted}
        removed = []
        for index, ifname in sorted(self._slot_objects().items()):
            if index not in keep:
                self._remove_slot_objects(index, ifname)
                removed.append(f"egress rules of slot {index}")
        for attachment in adopted:
            self._remove_slot_objects(attachment.slot.index, attachment.slot.host_ifname)
            await self.attach(attachment)
        return removed

    def _slot_objects(self) -> dict[int, str | None]:
        return egress_slots.slot_objects(self.nft, self.table)

    def _remove_slot_objects(self, index: int, ifname: str | None) -> None:
        egress_slots.remove_slot_objects(self.nft, self.table, index, ifname)

    async def learn(self, state: SandboxEgress, addresses: Sequence[tuple[str, int]]) -> None:
        if self._by_id.get(state.sandbox_id) is not state:
            return
        batch = egress_rules.learn(self.table, index=state.slot.index, addresses=addresses)
        try:
            # in a thread: another thread may hold the library's lock for milliseconds (a slot's
            # rules being installed), and the event loop must not wait on it
            await asyncio.to_thread(self.nft.run, batch)
        except NftError:
            log.exception("could not add learned addresses for %s", state.sandbox_id)

    # counters --------------------------------------------------------------------------------
    def _counters(self) -> dict[str, tuple[int, int]]:
        out = {}
        for item in self.nft.query(f"list counters table inet {self.table}"):
            counter = item.get("counter")
            if counter:
                out[counter["name"]] = (int(counter["packets"]), int(counter["bytes"]))
        return out

    def report(
        self, sandbox_id: str, counters: Mapping[str, tuple[int, int]] | None = None
    ) -> dict[str, Any]:
        state = self._by_id.get(sandbox_id)
        if state is None:
            return {"attached": False}
        counters = self._counters() if counters is None else counters
        p = egress_rules.prefix(state.slot.index)

        def get(name: str) -> tuple[int, int]:
            return counters.get(p + name, (0, 0))

        s = state.stats
        return {
            "attached": True,
            "mode": state.policy.mode,
            "allowed": {
                "connections": get("new")[0] + s.proxied_allowed,
                "bytes_out": get("tx")[1] + s.bytes_sent,
                "bytes_in": get("rx")[1] + s.bytes_received,
            },
            "denied": {
                "connections": get("deny_new")[0] + s.proxied_denied,
                "packets": get("deny")[0],
                "bytes": get("deny")[1],
            },
            "dns": {"answered": s.dns_allowed, "refused": s.dns_denied},
            "proxy": {
                "connections": s.proxied_allowed,
                "denied": s.proxied_denied,
                "transformed": s.transformed,
                "learned_addresses": len(state.learned),
            },
        }

    def reports(self, org_id: str | None = None) -> dict[str, dict[str, Any]]:
        counters = self._counters()
        return {
            sid: self.report(sid, counters)
            for sid, state in self._by_id.items()
            if org_id is None or state.org_id == org_id
        }
