"""`timeout` (seconds on the wire) is enforced: the sandbox ends, or pauses with auto_pause."""

from __future__ import annotations

import time

import httpx
import pytest

from tests._support import api

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def wait_for(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_sandbox_is_deleted_at_its_timeout(http: httpx.Client) -> None:
    sid = api.create(http, timeout=3)["id"]
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    assert wait_for(lambda: http.get(f"/v1/sandbox/{sid}/").status_code == 404)


def test_auto_pause_pauses_at_timeout_and_resumes_on_request(http: httpx.Client) -> None:
    sid = api.create(http, timeout=3, auto_pause=True)["id"]
    api.run(http, sid, "echo before > /root/state")
    assert wait_for(lambda: http.get(f"/v1/sandbox/{sid}/").json()["state"] == "paused")
    time.sleep(2)  # a paused auto_pause sandbox is not deleted later by the reaper
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "paused"
    assert api.run(http, sid, "cat /root/state")["stdout"] == "before\n"
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    api.delete(http, sid)
