"""Warm pools over the host object (``atoll.server.warm`` uses ``SandboxHost``, not the manager):
a create claims a booted sandbox, with its own limits and one record; a claim that fails
removes the warm sandbox and leaves nothing; closing the pool removes the ready ones."""

from __future__ import annotations

import asyncio

import pytest

from atoll._exceptions import ServerError
from atoll._states import State
from atoll.server.warm import WarmPool, WarmSandbox
from atoll.templates.registry import Template
from tests.unit.conftest import TEMPLATE, MakeHost


async def _filled(warm: WarmPool, count: int) -> None:
    """Until the pool's background refill has ``count`` ready (it has no event to wait on)."""
    async with asyncio.timeout(5):
        while warm.ready_count < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_create_claims_a_warm_sandbox_and_the_pool_refills(make_host: MakeHost) -> None:
    host = await make_host(warm_pool_size=1)
    assert host.warm is not None
    host.warm.start()
    await _filled(host.warm, 1)
    (booted,) = host.backend.running
    row = await host.create(vcpu=2, memory=512)
    assert row.id == booted  # the warm one, now this request's
    assert host.backend.limits[row.id] == (2, 512)  # lowered from what it was booted with
    stored = await host.stored(row.id)
    assert (stored.state, stored.net_slot) == (State.RUNNING, row.net_slot) and row.net_slot
    await _filled(host.warm, 1)  # refilled in the background
    await host.warm.close()
    assert host.backend.holds == {row.id}  # the ready one went with the pool; the claimed one stays
    await host.manager.delete(row.org_id, row.id)
    assert host.holds_nothing()


async def test_a_claim_that_fails_removes_the_warm_sandbox_and_leaves_nothing(make_host: MakeHost) -> None:
    host = await make_host(warm_pool_size=1)
    assert host.warm is not None
    host.warm.start()
    await _filled(host.warm, 1)
    (booted,) = host.backend.running
    host.backend.faults.fail("set_limits", times=1)
    with pytest.raises(ServerError):
        await host.create()
    assert booted not in host.backend.holds
    assert not await host.records()  # no record of the request
    await host.warm.close()
    assert host.holds_nothing()


class HeldPool(WarmPool):
    """A pool whose boots of ``held`` never finish (a desktop's boot, seconds long, stretched)."""

    held = "system/slow:v1"

    async def _boot_one(self, template: Template) -> WarmSandbox:
        if template.name == self.held:
            await asyncio.Event().wait()
        return await super()._boot_one(template)


async def test_a_claimed_template_refills_while_another_template_is_still_booting(
    make_host: MakeHost,
) -> None:
    host = await make_host(warm_pool_size=1)
    templates = host.manager.host.templates
    (templates.dir_for(HeldPool.held) / "rootfs").mkdir(parents=True)
    templates.save(Template(id="tpl-slow", name=HeldPool.held))
    pool = HeldPool(host.manager.host, size=1, template_names=(TEMPLATE, HeldPool.held))
    host.manager.warm = pool
    pool.start()
    try:
        await _filled(pool, 1)
        (booted,) = host.backend.running
        row = await host.create()
        assert row.id == booted
        await _filled(pool, 1)  # the default's own lane: not behind the held boot
        assert pool.levels() == {TEMPLATE: {"ready": 1, "size": 1}, HeldPool.held: {"ready": 0, "size": 1}}
        await host.manager.delete(row.org_id, row.id)
    finally:
        await pool.close()  # cancels the held boot too
    assert host.holds_nothing()
