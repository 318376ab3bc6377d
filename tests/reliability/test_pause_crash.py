"""``kill -9`` during a checkpoint pause (issue 15, finding 7): after a restart a sandbox whose
checkpoint image (CRIU's, or runsc's) is complete comes back ``paused`` and resumes with its
processes; one whose image is incomplete is reported ``stopped`` and the image is removed; no
``checkpoint/`` or ``checkpoint.work/`` outlives its use (after a resume or a start). Both
backends (the completion marker is written by each)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.runtime.gvisor import GVisorBackend
from tests._support import api
from tests._support.server import ServerProcess
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
SERVE_ARGS = ("--no-build-template",)  # make test builds it first; never rebuilt under other servers
MARKER = "atoll-complete"  # what the runtime writes once its save (CRIU, runsc) has succeeded


def state(http: httpx.Client, sid: str) -> str:
    return str(http.get(f"/v1/sandbox/{sid}/").json()["state"])


def images(server: ServerProcess, sid: str) -> list[Path]:
    base = server.data_dir / "sandboxes" / sid
    return [p for p in (base / "checkpoint", base / "checkpoint.work") if p.exists()]


def as_if_cut_short(server: ServerProcess, sid: str) -> None:
    """What a kill between CRIU's success and the record of the pause leaves: the record still
    says running, the container is gone, CRIU's work directory may still be there."""
    with sqlite3.connect(server.data_dir / "atoll.db") as db:
        changed = db.execute(
            "UPDATE sandboxes SET state = 'running', pause_kind = NULL WHERE id = ?", (sid,)
        ).rowcount
        assert changed == 1
    (server.data_dir / "sandboxes" / sid / "checkpoint.work").mkdir(exist_ok=True)


@pytest.fixture
def paused_by_checkpoint(spare: SpareServer) -> Iterator[tuple[ServerProcess, httpx.Client, str, str]]:
    """A spare server and a sandbox on it paused by checkpoint, with a process to recognise."""
    with (
        spare(*SERVE_ARGS) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        health = http.get("/v1/health").json()
        if not health.get("checkpoint"):
            pytest.skip("no checkpointing runtime on this host")
        sid = api.create(http)["id"]
        pid = api.run(http, sid, "nohup sleep 3600 >/dev/null 2>&1 & echo $!")["stdout"].strip()
        r = http.post(f"/v1/sandbox/{sid}/pause")
        assert r.status_code == 201, r.text
        assert (server.data_dir / "sandboxes" / sid / "checkpoint" / MARKER).is_file()
        server.kill9()
        yield server, http, sid, pid
        api.delete(http, sid)


def test_complete_image_after_a_crash_is_paused_and_resumes(
    paused_by_checkpoint: tuple[ServerProcess, httpx.Client, str, str],
) -> None:
    server, http, sid, pid = paused_by_checkpoint
    as_if_cut_short(server, sid)
    server.start()
    assert state(http, sid) == "paused"
    assert [p.name for p in images(server, sid)] == ["checkpoint"]  # the work directory is gone
    # resumed from the image: the same process, still running
    assert api.run(http, sid, f"kill -0 {pid} && echo alive")["stdout"] == "alive\n"
    assert images(server, sid) == []


def test_incomplete_image_after_a_crash_is_removed_and_stopped(
    paused_by_checkpoint: tuple[ServerProcess, httpx.Client, str, str],
) -> None:
    server, http, sid, _ = paused_by_checkpoint
    as_if_cut_short(server, sid)
    (server.data_dir / "sandboxes" / sid / "checkpoint" / MARKER).unlink()  # CRIU never finished
    server.start()
    assert state(http, sid) == "stopped"
    assert images(server, sid) == []
    assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
    assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"


def test_image_of_a_stopped_sandbox_does_not_stay(
    paused_by_checkpoint: tuple[ServerProcess, httpx.Client, str, str],
) -> None:
    """What an earlier server left (a sandbox reported stopped beside its 600 MB image): removed
    at start-up, not kept outside the disk quota for good, and the sandbox starts afresh."""
    server, http, sid, _ = paused_by_checkpoint
    with sqlite3.connect(server.data_dir / "atoll.db") as db:
        db.execute(
            "UPDATE sandboxes SET state = 'stopped', pause_kind = NULL, net_slot = NULL WHERE id = ?", (sid,)
        )
    server.start()
    assert state(http, sid) == "stopped"
    assert images(server, sid) == []
    assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
    assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
    assert images(server, sid) == []


def test_gvisor_sandbox_killed_between_its_save_and_its_halt_is_paused(spare: SpareServer) -> None:
    """gVisor saves a paused sandbox and halts it afterwards: a kill in between leaves it alive
    (paused) beside a complete image. After the restart the image wins: the sandbox is halted
    and ``paused``, and resumes from the image with its processes."""
    with (
        spare(*SERVE_ARGS) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        if http.get("/v1/health").json().get("runtime") != "runsc":
            pytest.skip("runc's save (CRIU) ends the processes itself: nothing is left alive")
        sid = api.create(http)["id"]
        pid = api.run(http, sid, "nohup sleep 3600 >/dev/null 2>&1 & echo $!")["stdout"].strip()
        server.kill9()
        image = server.data_dir / "sandboxes" / sid / "checkpoint"
        backend = GVisorBackend(
            binary="runsc", state_root=Path("/run/atoll") / server.instance / "runsc",
            cgroup_parent=f"atoll_{server.instance}",
        )  # fmt: skip

        async def save_without_halting() -> None:
            await backend.pause(sid)  # as the server's checkpoint does, then the kill
            await backend.checkpoint(sid, image, leave_running=True)
            assert sid in await backend.running_ids()

        asyncio.run(save_without_halting())
        assert (image / MARKER).is_file()
        server.start()
        assert state(http, sid) == "paused"
        assert sid not in asyncio.run(backend.running_ids())  # halted: the image supersedes it
        assert api.run(http, sid, f"kill -0 {pid} && echo alive")["stdout"] == "alive\n"
        assert images(server, sid) == []
        api.delete(http, sid)
