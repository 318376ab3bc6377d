"""Start-up reconciliation over the fakes: each transition a crash cut short is finished through
the state table (``SandboxManager.move``), with the host object doing the work, and what no
record owns is removed."""

from __future__ import annotations

from atoll._states import State
from atoll.runtime.base import CHECKPOINT_COMPLETE
from atoll.runtime.spec import SandboxSpec
from atoll.server.reconcile import reconcile
from atoll.store.models import SandboxRow
from tests.unit.conftest import Host, MakeHost, unit_row


def _row(sandbox_id: str, state: State, *, net_slot: int | None = None) -> SandboxRow:
    return unit_row(sandbox_id, state, net_slot=net_slot)


def _spec(host: Host, row: SandboxRow) -> SandboxSpec:
    return host.manager.host.spec_for(row, host.manager.host.template_for(row), None)


async def _left_by_a_crash(host: Host, row: SandboxRow, *, alive: bool = False, frozen: bool = False) -> None:
    """A record as the crashed server wrote it, its directory, and its processes if ``alive``."""
    await host.repo.add_sandbox(row)
    host.manager.host.sandbox_dir(row.id).mkdir(parents=True)
    if alive:
        await host.backend.boot(_spec(host, row))
        if frozen:
            await host.backend.pause(row.id)


async def test_each_cut_short_transition_is_finished_through_the_table(make_host: MakeHost) -> None:
    host = await make_host()
    await _left_by_a_crash(host, _row("sbxstarting", State.STARTING))
    await _left_by_a_crash(host, _row("sbxdeleting", State.DELETING))
    await _left_by_a_crash(host, _row("sbxlost", State.RUNNING))
    for index, state in ((3, State.UNPAUSING), (4, State.SNAPSHOTTING)):  # cut short while frozen
        row = _row(f"sbx{state.value}", state, net_slot=index)
        await _left_by_a_crash(host, row, alive=True, frozen=True)
    await _left_by_a_crash(host, _row("sbxrunning", State.RUNNING, net_slot=5), alive=True)
    await _left_by_a_crash(host, _row("sbxstopped", State.STOPPED))
    # killed while pausing, after CRIU had written the whole image (marked complete)
    await _left_by_a_crash(host, _row("sbxsaved", State.RUNNING, net_slot=6))
    image = host.manager.host.checkpoint_dir("sbxsaved")
    image.mkdir()
    (image / CHECKPOINT_COMPLETE).write_text("")
    # a container no record names (a create cut short before its record)
    await host.backend.boot(_spec(host, _row("sbxorphan", State.RUNNING)))

    report = await reconcile(host.manager)

    states = {row.id: (row.state, row.pause_kind) for row in await host.records()}
    assert states == {
        "sbxstarting": (State.STOPPED, None),  # as a failed start: its disk kept
        "sbxdeleting": (State.DELETED, None),
        "sbxlost": (State.STOPPED, None),  # its processes are gone: lost, its disk kept
        "sbxunpausing": (State.RUNNING, None),
        "sbxsnapshotting": (State.RUNNING, None),
        "sbxrunning": (State.RUNNING, None),
        "sbxstopped": (State.STOPPED, None),
        "sbxsaved": (State.PAUSED, "checkpoint"),
    }
    assert (await host.stored("sbxstarting")).state_reason  # says why it is stopped
    assert host.manager.host.sandbox_dir("sbxstarting").is_dir()
    assert not host.manager.host.sandbox_dir("sbxdeleting").exists()
    assert host.backend.running == {"sbxunpausing", "sbxsnapshotting", "sbxrunning"}  # thawed, adopted
    assert not host.backend.paused
    assert set(report.adopted) == {"sbxunpausing", "sbxsnapshotting", "sbxrunning", "sbxsaved"}
    assert {"sbxstarting", "sbxdeleting", "sbxlost"} <= set(report.finished)
    assert "container sbxorphan" in report.removed
    assert host.pool.taken == {3, 4, 5, 6}  # the adopted keep their slots
    assert not report.quarantined
