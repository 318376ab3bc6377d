"""A sandbox-made directory tree 1,500 levels deep (deeper than Python's recursion limit) must
never turn into a 500, a sandbox stuck mid-transition or a server that cannot start again:
the filesystem API answers or refuses with a 4xx naming its limit, a snapshot succeeds or is
refused with the sandbox back to ``running``, and the server restarts (also after kill -9)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess, runtime_double
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
DEPTH = 1500
TOP = "/tmp/deep"


def make_deep(http: httpx.Client, sid: str, top: str = TOP, depth: int = DEPTH) -> None:
    script = (
        f"mkdir -p {top} && cd {top} && i=0; "
        f"while [ $i -lt {depth} ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo needle > f"
    )
    result = api.run(http, sid, script, timeout=300)
    assert result["exit_code"] == 0, result


def fs(http: httpx.Client, sid: str, op: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/sandbox/{sid}/filesystem/{op}", json=body)


def exists(http: httpx.Client, sid: str, path: str) -> bool:
    r = fs(http, sid, "exists", path=path)
    assert r.status_code == 200, r.text
    return bool(r.json()["exists"])


def state(http: httpx.Client, sid: str) -> str:
    """The sandbox's state; a ``failed`` one with its reason, so that the failure says why."""
    body = http.get(f"/v1/sandbox/{sid}/").json()
    return f"failed: {body.get('state_reason')}" if body["state"] == "failed" else str(body["state"])


def assert_limit_or_ok(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text}"
    if r.status_code >= 400:
        assert r.status_code == 400, f"{what}: {r.status_code} {r.text}"
        assert "deep" in r.json()["message"] or "entries" in r.json()["message"], r.text


@pytest.mark.usefixtures("no_leaks")
def test_filesystem_api_on_a_deep_tree(http: httpx.Client) -> None:
    sid = api.create(http, timeout=1800)["id"]
    try:
        make_deep(http, sid)
        for op, body in (
            ("ls", {"path": TOP, "recursive": True}),
            ("tree", {"path": TOP}),
            ("glob", {"path": TOP, "pattern": "**/f"}),
            ("grep", {"path": TOP, "pattern": "needle"}),
        ):
            assert_limit_or_ok(fs(http, sid, op, **body), op)
        # a walk that stays shallow works on the same tree
        r = fs(http, sid, "tree", path=TOP, max_depth=3)
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["children"][0]["children"][0]["name"] == "d"
        r = fs(http, sid, "ls", path=TOP)
        assert r.status_code == 200 and [i["name"] for i in r.json()["items"]] == ["d"], r.text

        # copy: either complete, or refused with nothing of it left behind
        r = fs(http, sid, "copy", src_path=TOP, dst_path="/tmp/deep-copy", recursive=True)
        assert_limit_or_ok(r, "copy")
        if r.status_code == 204:
            bottom = "/tmp/deep-copy/" + "/".join(["d"] * DEPTH)
            assert (
                api.run(http, sid, f"cd /tmp/deep-copy && cat {bottom[len('/tmp/deep-copy/') :]}/f")["stdout"]
                == "needle\n"
            )
            assert fs(http, sid, "delete", path="/tmp/deep-copy", recursive=True).status_code == 204
        assert not exists(http, sid, "/tmp/deep-copy")

        # delete: always possible, however deep
        r = fs(http, sid, "delete", path=TOP, recursive=True)
        assert r.status_code == 204, r.text
        assert not exists(http, sid, TOP)
        make_deep(http, sid)  # and the sandbox's own delete removes a deep tree too
    finally:
        api.delete(http, sid)


def test_snapshot_of_a_deep_tree_then_restart(spare: SpareServer) -> None:
    with (
        spare() as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        sid = api.create(http, timeout=3600)["id"]
        make_deep(http, sid)
        if http.get("/v1/health").json().get("checkpoint"):
            r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "deep"})
            assert r.status_code in (201, 400), r.text
            assert state(http, sid) == "running"
            assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
            snapshot_id = r.json()["id"] if r.status_code == 201 else None
            # deeper still: paths past PATH_MAX (4096 bytes), which a copy by path cannot take
            make_deep(http, sid, "/tmp/deeper")
            make_deep(http, sid, "/tmp/lower")
            bottom = "/tmp/deeper/" + "/".join(["d"] * DEPTH)
            assert api.run(http, sid, f"mv /tmp/lower {bottom}/")["exit_code"] == 0
            r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "deeper"})
            assert r.status_code in (201, 400), r.text
            assert state(http, sid) == "running"
            assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
            if r.status_code == 201:
                assert http.delete(f"/v1/snapshot/{r.json()['id']}").status_code == 204
        else:
            snapshot_id = None
        server.stop()
        server.start()
        assert state(http, sid) == "running"
        server.kill9()
        server.start()
        assert state(http, sid) == "running"
        if snapshot_id is not None:
            assert http.delete(f"/v1/snapshot/{snapshot_id}").status_code == 204
        api.delete(http, sid)  # removes the deep tree with the sandbox


def test_restart_with_a_sandbox_left_mid_snapshot(spare: SpareServer) -> None:
    """kill -9 after the record said ``snapshotting`` but before the freeze: reconciliation finds
    a container that is not paused. Start-up must go on, and the sandbox end up honestly stated."""
    with (
        spare() as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        sid = api.create(http, timeout=3600)["id"]
        other = api.create(http, timeout=3600)["id"]
        server.kill9()
        set_state(server, sid, "snapshotting")
        server.start()
        # adopted (resumed: "not paused" is fine), or quarantined: processes gone, disk kept
        assert state(http, sid).split(":")[0] in ("running", "failed"), state(http, sid)
        assert state(http, other) == "running"
        assert api.run(http, other, "echo ok")["stdout"] == "ok\n"
        for each in (sid, other):
            api.delete(http, each)


RESUME_FAILS = """#!/bin/bash
# test double: the real runc, except that while {flag} exists, "resume" fails (and "state",
# which a failed resume asks whether the sandbox runs anyway, cannot tell)
for a in "$@"; do
  if [[ ( $a == resume || $a == state ) && -e {flag} ]]; then echo "injected failure: $a" >&2; exit 1; fi
done
exec {real} "$@"
"""


def test_restart_quarantines_a_sandbox_it_cannot_repair(spare: SpareServer, tmp_path: Path) -> None:
    """Reconciliation meets a sandbox it cannot repair (the runtime refuses to resume it): the
    server starts anyway, that sandbox is ``failed`` with the reason (processes gone, disk kept)
    and starts again later, and the others are adopted untouched."""
    double = runtime_double(tmp_path, RESUME_FAILS)
    flag = tmp_path / "fail-run"
    with (
        spare("--runtime", "runc", "--runtime-binary", str(double)) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        sid = api.create(http, timeout=3600)["id"]
        other = api.create(http, timeout=3600)["id"]
        api.run(http, sid, "echo kept > /root/mark")
        server.kill9()
        set_state(server, sid, "snapshotting")
        flag.touch()
        server.start()
        flag.unlink()
        failed = http.get(f"/v1/sandbox/{sid}/").json()
        assert failed["state"] == "failed", failed
        assert "could not repair" in failed["state_reason"] and "resume" in failed["state_reason"], failed
        listed = {item["id"]: item for item in http.get("/v1/sandboxes").json()["items"]}
        assert listed[sid]["state_reason"] == failed["state_reason"]
        for refused in ("pause", "stop"):  # only delete or start follow
            assert http.post(f"/v1/sandbox/{sid}/{refused}").status_code == 409
        assert state(http, other) == "running"
        assert api.run(http, other, "echo ok")["stdout"] == "ok\n"
        assert http.post(f"/v1/sandbox/{sid}/start").status_code == 200
        assert api.run(http, sid, "cat /root/mark")["stdout"] == "kept\n"
        for each in (sid, other):
            api.delete(http, each)


def set_state(server: ServerProcess, sid: str, value: str) -> None:
    with sqlite3.connect(server.data_dir / "atoll.db") as db:
        assert db.execute("UPDATE sandboxes SET state = ? WHERE id = ?", (value, sid)).rowcount == 1


def test_kill9_during_a_snapshot(spare: SpareServer) -> None:
    """The server killed while a snapshot freezes and copies the sandbox: it starts again, the
    sandbox is running (resumed), and nothing of the half-made snapshot stays (leak check)."""
    with (
        spare() as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        if not http.get("/v1/health").json().get("checkpoint"):
            pytest.skip("no checkpointing runtime on this host")
        sid = api.create(http, timeout=3600)["id"]
        # memory to dump: the checkpoint takes seconds, long enough to be killed in
        api.run(
            http,
            sid,
            "nohup sh -c 'x=$(head -c 300000000 /dev/zero | tr \"\\0\" a); sleep 3600' >/dev/null 2>&1 &"
            " sleep 5",
            timeout=60,
        )
        outcome: list[str] = []

        def snapshot() -> None:
            try:
                r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "cut"})
                outcome.append(str(r.status_code))
            except httpx.HTTPError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=snapshot)
        thread.start()
        deadline = time.monotonic() + 60
        while not list(server.data_dir.glob("snapshots/*/image")) and time.monotonic() < deadline:
            time.sleep(0.02)  # the disk layer is copied and CRIU is dumping the memory
        server.kill9()
        thread.join(timeout=60)
        server.start()
        assert state(http, sid) == "running"
        assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
        kept = http.get("/v1/snapshots").json()["items"]
        if outcome == ["201"]:  # it won the race: complete and listed
            assert [i["name"] for i in kept] == ["cut"]
            assert http.delete(f"/v1/snapshot/{kept[0]['id']}").status_code == 204
        else:  # cut short: nothing of it is kept (the leak check looks at the directories too)
            assert kept == [], kept
        api.delete(http, sid)
