"""A pause's dump starts at once: the sandbox is frozen beforehand (``criu.freeze_for_dump``,
polled every millisecond), not left to CRIU, whose own freeze sleeps 100 ms whenever its first
look finds the group still freezing (most pauses). What was frozen so and runs on (a dump with
``--leave-running``, a failed one) is thawed again.

Needs a checkpointing runtime (runc + CRIU >= 4.2, installed by `make test`)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from atoll.runtime import base, cgroups, criu
from atoll.runtime.oci import OCIBackend
from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import INSTANCE

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

PARENT = f"atoll_{INSTANCE}"  # Settings.cgroup_parent
BUSY = "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &"  # a task that is running when frozen


def frozen(sandbox_id: str) -> bool:
    if cgroups.is_v2():
        events = cgroups.CGROUP_ROOT / PARENT / sandbox_id / "cgroup.events"
        return "frozen 1" in events.read_text().splitlines()
    state = cgroups.CGROUP_ROOT / "freezer" / PARENT / sandbox_id / "freezer.state"
    return state.read_text().strip() == "FROZEN"


def require_checkpointing(http: httpx.Client) -> None:
    if GVISOR:  # runsc saves its sentry, not the sandbox's processes: no CRIU freeze involved
        pytest.skip("the OCI backends' CRIU path")
    if not http.get("/v1/health").json().get("checkpoint"):
        pytest.skip("needs a checkpointing runtime (runc + CRIU)")


def test_a_sandbox_is_frozen_before_its_dump_and_thawed_when_it_runs_on(http: httpx.Client) -> None:
    require_checkpointing(http)
    sid = api.create(http)["id"]
    try:
        api.run(http, sid, BUSY)
        assert asyncio.run(criu.freeze_for_dump(PARENT, sid)) is True
        assert frozen(sid)
        # frozen by someone else (a snapshot freezes first): not this call's to thaw
        assert asyncio.run(criu.freeze_for_dump(PARENT, sid)) is False
        assert frozen(sid)
        criu.thaw(PARENT, sid)
        assert not frozen(sid)
        assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
        # a group that is gone: nothing frozen, nothing raised
        assert asyncio.run(criu.freeze_for_dump(PARENT, "sbxnosuchsandbox")) is False
    finally:
        api.delete(http, sid)


def test_a_dump_that_leaves_the_sandbox_running_leaves_it_thawed(http: httpx.Client, tmp_path: Path) -> None:
    """The runtime's checkpoint with ``--leave-running`` (CRIU freezes a group that was frozen
    when it came back to it): the sandbox runs on, its image complete."""
    require_checkpointing(http)
    sid = api.create(http)["id"]
    try:
        api.run(http, sid, BUSY)
        runc = shutil.which("runc")
        assert runc is not None
        # the server's own runtime state (Settings.run_dir), as a snapshot's checkpoint uses it
        state_root = Path("/run/atoll") / INSTANCE / "runc"
        backend = OCIBackend(binary=runc, state_root=state_root, cgroup_parent=PARENT)
        image = tmp_path / "image"
        asyncio.run(backend.checkpoint(sid, image, leave_running=True))
        assert base.checkpoint_complete(image)
        assert not frozen(sid)
        assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
        paused = http.post(f"/v1/sandbox/{sid}/pause").json()  # and pauses again as usual
        assert paused["pause_kind"] == "checkpoint"
        assert api.run(http, sid, "echo again")["stdout"] == "again\n"
    finally:
        api.delete(http, sid)


def test_a_server_answers_after_each_of_several_pauses(http: httpx.Client) -> None:
    """The first pause dumps a sandbox still in its slot's namespaces; the later ones a restored
    one, whose interface goes back to the pool's namespace before the dump and is set up there
    while the dump runs (user namespaces): the address answers after every resume."""
    require_checkpointing(http)
    sid = api.create(http, memory=512)["id"]
    try:
        api.run(http, sid, "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 0.5")
        ip = api.sandbox_ip(http, sid)
        for _ in range(3):
            assert http.post(f"/v1/sandbox/{sid}/pause").json()["pause_kind"] == "checkpoint"
            api.run(http, sid, "true")
            assert httpx.get(f"http://{ip}:8000/", timeout=10).status_code == 200
    finally:
        api.delete(http, sid)
