"""The organisation's sandbox limit (``max_sandboxes_per_org``, ``atoll.server.quota``): one check
for create, start and restore that counts sandboxes still booting, so many concurrent requests
never take an organisation over its limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from atoll._exceptions import ConflictError, RateLimitError
from atoll._states import State
from atoll.server.snapshots import SnapshotService
from atoll.store.models import SandboxRow, SnapshotRow
from tests.unit.conftest import ORG, TEMPLATE, Host, MakeHost

LIMIT = 3
BOOT_S = 0.02  # each fake operation's time: the boots of concurrent requests overlap


async def _limited_host(make_host: MakeHost) -> Host:
    host = await make_host(max_sandboxes_per_org=LIMIT)
    host.backend.faults.delay_s = BOOT_S
    return host


async def _snapshot(host: Host) -> SnapshotService:
    """A snapshot named ``snap`` (record, image and disk layer), and the service that restores it."""
    snapshot_id = "snpunit"
    directory = host.manager.settings.snapshots_dir / snapshot_id
    (directory / "image").mkdir(parents=True)
    (directory / "image" / "pages.img").write_bytes(b"memory")
    (directory / "upper").mkdir()
    (directory / "parent").write_text("")
    await host.snapshots_repo.add(
        SnapshotRow(
            id=snapshot_id,
            org_id=ORG,
            name="snap",
            source_sandbox_id="sbxgone",
            template_id="tpl-unit",
            template_name=TEMPLATE,
            runtime="fake",
            vcpu=1,
            memory=256,
            disk=1024,
            env_vars={},
        )
    )
    return SnapshotService(host.manager, host.snapshots_repo)


def _restore(snapshots: SnapshotService) -> Awaitable[SandboxRow]:
    return snapshots.restore(ORG, "snap", auto_pause=False, timeout=600, network_policy=None)


async def _counted(host: Host) -> list[SandboxRow]:
    not_counted = {State.DELETED, State.STOPPED, State.FAILED}
    return [r for r in await host.records() if State(r.state) not in not_counted]


def _split(results: list[Any]) -> tuple[list[SandboxRow], list[BaseException]]:
    made = [r for r in results if isinstance(r, SandboxRow)]
    refused = [r for r in results if isinstance(r, BaseException)]
    return made, refused


async def test_concurrent_creates_never_go_over_the_limit(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    results = await asyncio.gather(*(host.create() for _ in range(12)), return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == LIMIT, results
    assert all(type(e) is ConflictError and "organisation limit" in e.message for e in refused), refused
    assert len(await _counted(host)) == LIMIT and host.backend.peak == LIMIT


async def test_concurrent_restores_never_go_over_the_limit(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    snapshots = await _snapshot(host)
    results = await asyncio.gather(*(_restore(snapshots) for _ in range(12)), return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == LIMIT, results
    assert all(type(e) is RateLimitError and e.retry_after == 5 for e in refused), refused
    assert len(await _counted(host)) == LIMIT and host.backend.peak == LIMIT


async def test_creates_restores_and_starts_share_one_limit(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    snapshots = await _snapshot(host)
    first = await host.create()
    stopped = [await host.create() for _ in range(2)]
    for row in stopped:
        await host.manager.stop(ORG, row.id)  # a stopped sandbox does not count
    work: list[Awaitable[SandboxRow]] = [host.manager.start(ORG, row.id) for row in stopped]
    work += [host.create() for _ in range(4)] + [_restore(snapshots) for _ in range(4)]
    results = await asyncio.gather(*work, return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == LIMIT - 1, results  # the room left beside ``first``
    assert all(isinstance(e, ConflictError | RateLimitError) for e in refused), refused
    counted = await _counted(host)
    assert len(counted) == LIMIT and first.id in {r.id for r in counted}
    assert host.backend.peak == LIMIT
    for row in stopped:  # a start refused leaves its sandbox as it was
        if row.id not in {r.id for r in counted}:
            assert (await host.stored(row.id)).state == State.STOPPED


async def test_a_refused_start_says_when_to_retry_and_stays_stopped(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    row = await host.create()
    await host.manager.stop(ORG, row.id)
    for _ in range(LIMIT):
        await host.create()
    try:
        await host.manager.start(ORG, row.id)
    except RateLimitError as exc:
        assert exc.retry_after == 5
    else:
        raise AssertionError("a start past the limit was allowed")
    stored = await host.stored(row.id)
    assert stored.state == State.STOPPED and row.id not in host.backend.holds


async def test_a_failed_create_gives_its_room_back(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    for _ in range(LIMIT - 1):
        await host.create()
    host.backend.faults.fail("boot", times=1)
    try:
        await host.create()
    except ConflictError as exc:  # pragma: no cover - the failure is a 500, not the limit
        raise AssertionError(f"refused by the limit: {exc}") from exc
    except Exception:
        pass
    assert len(await _counted(host)) == LIMIT - 1
    await host.create()  # the failed one's room is free again
    assert len(await _counted(host)) == LIMIT
    snapshots = await _snapshot(host)
    try:
        await _restore(snapshots)
    except RateLimitError:
        pass
    else:
        raise AssertionError("a restore past the limit was allowed")


async def test_other_organisations_have_their_own_limit(make_host: MakeHost) -> None:
    host = await _limited_host(make_host)
    await host.repo.ensure_org("org-other", "org-other")
    results = await asyncio.gather(
        *(host.create(org) for org in [ORG, "org-other"] * 5), return_exceptions=True
    )
    made, _ = _split(results)
    assert sorted(r.org_id for r in made) == sorted([ORG] * LIMIT + ["org-other"] * LIMIT)
