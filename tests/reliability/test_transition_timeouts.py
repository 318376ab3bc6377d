"""No transitional state outlives its operation (issue 15): each transition's work runs under
``--transition-timeout-s`` (a snapshot under ``--snapshot-timeout-s``); when it hangs, the
request answers 504 within about that time and the sandbox falls back through the state table
with the reason in ``state_reason``, its processes cleaned up. When even the clean-up hangs,
the sandbox is ``failed`` (disk kept), and accepts delete, or start over its kept disk.

The spare server's runtime is a test double (``--runtime-binary``): the real runc, except that
while the flag file exists, the runc subcommand named in it hangs (``sleep``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess, runtime_double
from tests.reliability.conftest import _spare

pytestmark = [pytest.mark.privileged]

TIMEOUT_S = 3.0
HANGS = """#!/bin/bash
# test double: the real runc, except that while {flag} exists, the subcommand it names hangs
if [[ -e {flag} ]]; then
  hang=$(<{flag})
  for a in "$@"; do
    if [[ $a == "$hang" ]]; then exec sleep 3600; fi
  done
fi
exec {real} "$@"
"""


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return runtime_double(tmp_path_factory.mktemp("hangs"), HANGS)


@pytest.fixture(scope="module")
def server(double: Path) -> Iterator[ServerProcess]:
    timeouts = ("--transition-timeout-s", str(TIMEOUT_S), "--snapshot-timeout-s", str(TIMEOUT_S))
    with _spare("--runtime", "runc", "--runtime-binary", str(double), *timeouts) as proc:
        yield proc


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
        yield client
    assert_no_leaks(server)


@pytest.fixture
def hang(double: Path) -> Iterator[Path]:
    """Write a runc subcommand to it: that subcommand hangs until the test ends."""
    flag = double.parent.parent / "fail-run"
    yield flag
    flag.unlink(missing_ok=True)


def sandbox(http: httpx.Client, sid: str) -> dict[str, object]:
    body = http.get(f"/v1/sandbox/{sid}/").json()
    assert isinstance(body, dict)
    return body


def timed(call: httpx.Response, started: float, *, extra_s: float = 20.0) -> httpx.Response:
    """The hung request answered 504, bounded by the timeout (plus clean-up), not by the hang."""
    assert call.status_code == 504, call.text
    assert "timed out" in call.json()["message"], call.text
    assert time.monotonic() - started < TIMEOUT_S * 2 + extra_s
    return call


def checkpointing(http: httpx.Client) -> bool:
    return bool(http.get("/v1/health").json().get("checkpoint"))


def test_a_hung_start_falls_back_to_stopped(http: httpx.Client, hang: Path) -> None:
    sid = api.create(http)["id"]
    api.run(http, sid, "echo kept > /root/mark")
    assert http.post(f"/v1/sandbox/{sid}/stop").status_code == 200
    hang.write_text("run")
    started = time.monotonic()
    timed(http.post(f"/v1/sandbox/{sid}/start"), started)
    body = sandbox(http, sid)
    assert body["state"] == "stopped", body
    assert "starting timed out" in str(body["state_reason"]), body
    hang.unlink()
    assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
    assert sandbox(http, sid)["state_reason"] is None  # the next transition clears it
    assert api.run(http, sid, "cat /root/mark")["stdout"] == "kept\n"
    api.delete(http, sid)


def test_a_hung_resume_falls_back_to_paused(http: httpx.Client, hang: Path) -> None:
    sid = api.create(http)["id"]
    api.run(http, sid, "echo before > /tmp/mark")
    paused = http.post(f"/v1/sandbox/{sid}/pause").json()
    hang.write_text("restore" if paused["pause_kind"] == "checkpoint" else "resume")
    started = time.monotonic()
    timed(http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"}), started)
    body = sandbox(http, sid)
    assert body["state"] == "paused", body
    assert "resuming timed out" in str(body["state_reason"]), body
    hang.unlink()
    assert api.run(http, sid, "cat /tmp/mark")["stdout"] == "before\n"  # memory intact
    assert sandbox(http, sid)["state"] == "running"
    api.delete(http, sid)


def test_a_hung_pause_is_undone(http: httpx.Client, hang: Path) -> None:
    sid = api.create(http)["id"]
    api.run(http, sid, "echo before > /tmp/mark")
    hang.write_text("checkpoint" if checkpointing(http) else "pause")
    started = time.monotonic()
    timed(http.post(f"/v1/sandbox/{sid}/pause"), started)
    body = sandbox(http, sid)
    assert body["state"] == "running", body
    assert "pausing timed out" in str(body["state_reason"]), body
    hang.unlink()
    assert api.run(http, sid, "cat /tmp/mark")["stdout"] == "before\n"
    api.delete(http, sid)


def test_a_hung_snapshot_returns_to_running(http: httpx.Client, server: ServerProcess, hang: Path) -> None:
    if not checkpointing(http):
        pytest.skip("snapshots need runc with a working CRIU on this host")
    sid = api.create(http)["id"]
    api.run(http, sid, "echo before > /tmp/mark")
    hang.write_text("pause")  # the freeze before the copy never returns
    started = time.monotonic()
    timed(http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "hung"}), started)
    body = sandbox(http, sid)
    assert body["state"] == "running", body
    assert "snapshot timed out" in str(body["state_reason"]), body
    assert list((server.data_dir / "snapshots").iterdir()) == []  # the partial copy is gone
    assert http.get("/v1/snapshots").json()["total_items"] == 0
    hang.unlink()
    assert api.run(http, sid, "cat /tmp/mark")["stdout"] == "before\n"
    api.delete(http, sid)


def test_a_stop_whose_clean_up_hangs_ends_failed(http: httpx.Client, hang: Path) -> None:
    """The stop and its clean-up both hang: ``failed`` with the reason, disk kept; only delete
    and start are accepted, and start boots it again over its disk."""
    sid = api.create(http)["id"]
    api.run(http, sid, "echo kept > /root/mark")
    hang.write_text("delete")  # `runc delete`, the last step of removing the container
    started = time.monotonic()
    timed(http.post(f"/v1/sandbox/{sid}/stop"), started)
    body = sandbox(http, sid)
    assert body["state"] == "failed", body
    assert "stopping timed out" in str(body["state_reason"]), body
    assert "cleaning up timed out" in str(body["state_reason"]), body
    for refused in ("pause", "stop"):
        assert http.post(f"/v1/sandbox/{sid}/{refused}").status_code == 409
    assert http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"}).status_code == 409
    hang.unlink()
    assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
    assert api.run(http, sid, "cat /root/mark")["stdout"] == "kept\n"
    api.delete(http, sid)
