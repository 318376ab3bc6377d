"""Addresses learned from DNS answers reach nftables from a worker thread: a slot's rule batch
holds libnftables' lock for milliseconds in another thread, and the event loop (which serves
every sandbox's DNS, proxy and API traffic) must not stop while ``learn`` waits for it."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from pathlib import Path

import pytest

from atoll.network.addressing import Slot
from atoll.network.egress import Attachment, EgressConfig, EgressService, SandboxEgress
from atoll.network.nftables import Nft
from atoll.network.policy import EgressPolicy, NetworkPolicy

HELD_S = 0.4


@pytest.fixture
def service() -> EgressService:
    try:
        nft = Nft()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    service = EgressService(EgressConfig(instance="learntest", subnet="10.250.0.0/24"))
    service._nft = nft
    return service


async def test_learn_does_not_block_the_event_loop(service: EgressService, tmp_path: Path) -> None:
    slot = Slot(1, "10.250.0.1", "10.250.0.2", 30, "learntest-ns1", "learntest1")
    policy = EgressPolicy.compile(NetworkPolicy(mode="custom", allow_domains=("a.example",)))
    attachment = Attachment(sandbox_id="sbx1", org_id="org1", policy=policy, slot=slot, sandbox_dir=tmp_path)
    state = SandboxEgress(service, attachment, policy)
    service._by_id["sbx1"] = state  # attached (the table itself need not exist: a failure is logged)

    nft = service.nft
    held = threading.Event()

    def hold_the_lock() -> None:  # what a worker thread installing a slot's batch does
        with nft._lock:
            held.set()
            time.sleep(HELD_S)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(5)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await state.learn("a.example", [(ipaddress.IPv4Address("198.51.100.7"), 300)])
        waited = time.monotonic() - started
        ticker.cancel()
    finally:
        holder.join()
        nft.close()
    assert waited >= HELD_S / 2  # learn did wait for the lock ...
    assert ticks >= 5  # ... and the event loop went on meanwhile
    assert ipaddress.IPv4Address("198.51.100.7") in state.learned
