"""Response parsing: lenient about what is missing, strict only about the id."""

from __future__ import annotations

import pytest

from atoll import MalformedResponseError, ProcessResult, SandboxData, SandboxList, SandboxState, SandboxStatus
from atoll._states import State
from atoll.sdk.models import Snapshot, json_object, parse_state


def test_sandbox_state_is_the_one_state_enum() -> None:
    assert SandboxState is State
    assert isinstance(SandboxState.RUNNING, str)
    assert SandboxState("running") is SandboxState.RUNNING
    assert {s.value for s in SandboxState} >= {
        "starting",
        "running",
        "paused",
        "stopping",
        "stopped",
        "deleted",
    }


def test_states_absent_known_and_unknown() -> None:
    assert parse_state(None) is SandboxState.STARTING
    assert parse_state("paused") is SandboxState.PAUSED
    assert parse_state("hibernating") == "hibernating"


def test_sandbox_data_full_and_minimal() -> None:
    full = SandboxData.from_dict(
        {
            "id": "sbx-1",
            "template_id": "t",
            "vcpu": 2,
            "memory": 2048,
            "disk": 10240,
            "timeout": 600,
            "state": "running",
            "auto_pause": True,
            "created_at": "2026-01-01T00:00:00Z",
            "network_policy": {"mode": "deny-all"},
            "mounts": [{"id": "m1", "type": "object-storage"}],
            "future_field": 1,
        }
    )
    assert full == SandboxData(
        id="sbx-1",
        template_id="t",
        vcpu=2,
        memory=2048,
        disk=10240,
        timeout=600,
        state=SandboxState.RUNNING,
        auto_pause=True,
        created_at="2026-01-01T00:00:00Z",
        network_policy={"mode": "deny-all"},
        mounts=[{"id": "m1", "type": "object-storage"}],
    )
    minimal = SandboxData.from_dict({"id": "sbx-1", "vcpu": "x", "auto_pause": "yes", "mounts": []})
    assert minimal == SandboxData(id="sbx-1", mounts=[])
    assert minimal.state is SandboxState.STARTING


def test_status_has_no_network_policy() -> None:
    status = SandboxStatus.from_dict(
        {"id": "sbx-1", "network_policy": {"mode": "deny-all"}, "state": "paused"}
    )
    assert not hasattr(status, "network_policy")
    assert status.state is SandboxState.PAUSED
    assert status.mounts is None


@pytest.mark.parametrize("data", [{}, {"id": ""}, {"id": "  "}, {"id": 7}])
def test_an_id_is_required(data: dict[str, object]) -> None:
    with pytest.raises(MalformedResponseError, match="'id'"):
        SandboxData.from_dict(data)
    with pytest.raises(MalformedResponseError):
        SandboxStatus.from_dict(data)


def test_list_is_lenient() -> None:
    page = SandboxList.from_dict(
        {"items": [{"id": "a", "state": "running", "timeout_at": 1700000000, "launch_time": "l"}, "junk"]}
    )
    assert page.total_items == 1
    assert page.items[0].timeout_at == 1700000000
    assert page.items[0].launch_time == "l"
    assert page.items[0].state_change_time is None
    assert SandboxList.from_dict({}) == SandboxList(items=[], total_items=0)


def test_a_failed_sandbox_carries_its_reason_and_snapshots_their_inodes() -> None:
    reason = "start-up reconciliation could not repair it"
    status = SandboxStatus.from_dict({"id": "sbx-1", "state": "failed", "state_reason": reason})
    assert status.state is SandboxState.FAILED and status.state_reason == reason
    assert SandboxData.from_dict({"id": "sbx-1", "state_reason": reason}).state_reason == reason
    item = SandboxList.from_dict({"items": [{"id": "a", "state": "failed", "state_reason": reason}]}).items[0]
    assert item.state_reason == reason
    assert SandboxStatus.from_dict({"id": "sbx-1", "state": "running"}).state_reason is None
    snap = Snapshot.from_dict({"id": "s1", "name": "n", "size_bytes": 12288, "inodes": 3})
    assert (snap.size_bytes, snap.inodes) == (12288, 3)


def test_process_result() -> None:
    assert ProcessResult.from_dict({}) == ProcessResult(exit_code=0, stdout="", stderr="")
    assert ProcessResult.from_dict({"exit_code": 137, "stdout": None}) == ProcessResult(137, "", "")


def test_json_object() -> None:
    assert json_object(b'{"a": 1}') == {"a": 1}
    for bad in (b"", b"nope", b"[1]", b"null"):
        with pytest.raises(MalformedResponseError):
            json_object(bad)
