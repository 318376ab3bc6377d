"""Failure injection: the OCI runtime dying mid-create, the disk filling up while a snapshot is
written, a template vanishing from disk. Each gets a clear error, leaves nothing behind, and the
server keeps serving.

The spare server runs with test doubles it is configured with like any operator would:
``--runtime-binary`` (a wrapper around the real runc that, while a flag file exists, turns
``run`` into ``create`` and then fails: the container exists, half-made, when the error comes),
``--snapshots-dir`` (a 16 MiB tmpfs) and ``--templates-dir`` (the shared default template plus a
``system/vanish:1`` whose directory the test removes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess, runtime_double
from tests.reliability.conftest import _spare

pytestmark = [pytest.mark.privileged]

SHARED_TEMPLATES = Path("/var/lib/atoll/templates")
DEFAULT = "system--debian@bookworm"
VANISH = "system/vanish:1"
WRAPPER = """#!/bin/bash
# test double: the real runc, except that while {flag} exists, "run" only creates the container
# (its init waits, its cgroups and mounts exist) and then fails, as a runtime dying mid-create
real={real}
if [[ -e {flag} ]]; then
  args=(); hit=0; log=""; prev=""
  for a in "$@"; do
    [[ $prev == --log ]] && log=$a
    prev=$a
    if [[ $a == run && $hit == 0 ]]; then args+=(create); hit=1
    elif [[ $a == --detach && $hit == 1 ]]; then :
    else args+=("$a"); fi
  done
  if (( hit )); then
    "$real" "${{args[@]}}" </dev/null >/dev/null 2>&1
    echo "injected failure: the runtime died after creating the container" >> "${{log:-/dev/stderr}}"
    exit 1
  fi
fi
exec "$real" "$@"
"""


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("injection")
    runtime_double(root, WRAPPER)
    templates = root / "templates"
    templates.mkdir()
    (templates / DEFAULT).symlink_to(SHARED_TEMPLATES / DEFAULT)
    meta = json.loads((SHARED_TEMPLATES / DEFAULT / "template.json").read_text())
    vanish = templates / "system--vanish@1"
    vanish.mkdir()
    (vanish / "template.json").write_text(json.dumps({**meta, "id": "tpl-system-vanish-1", "name": VANISH}))
    (vanish / "rootfs").symlink_to(SHARED_TEMPLATES / DEFAULT / "rootfs")
    snapshots = root / "snapshots"
    snapshots.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "atoll-test-snapshots", str(snapshots)], check=True
    )
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(snapshots)], check=False)


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[ServerProcess]:
    args = (
        "--runtime", "runc", "--runtime-binary", str(layout / "bin" / "runc"),
        "--snapshots-dir", str(layout / "snapshots"),
        "--templates-dir", str(layout / "templates"), "--no-build-template",
    )  # fmt: skip
    with _spare(*args) as proc:
        yield proc


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
        yield client
    assert_no_leaks(server)


def still_serving(http: httpx.Client) -> None:
    sid = api.create(http)["id"]
    assert api.run(http, sid, "echo fine")["stdout"] == "fine\n"
    api.delete(http, sid)


def test_runtime_dies_mid_create(http: httpx.Client, layout: Path) -> None:
    flag = layout / "fail-run"
    flag.touch()
    try:
        for _ in range(3):
            r = http.post("/v1/sandbox", json={})
            assert r.status_code == 500, r.text
            assert "sandbox failed to start" in r.json()["message"]
            assert "injected failure" in r.json()["message"]
    finally:
        flag.unlink()
    assert http.get("/v1/sandboxes").json()["total_items"] == 0
    still_serving(http)


def test_disk_full_while_writing_a_snapshot(http: httpx.Client, server: ServerProcess, layout: Path) -> None:
    if not http.get("/v1/health").json()["checkpoint"]:
        pytest.skip("snapshots need runc with a working CRIU on this host")
    sid = api.create(http)["id"]
    try:
        api.run(http, sid, "head -c 40M /dev/urandom > /root/big; echo kept > /root/small")
        r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "too-big"})
        assert r.status_code == 507, r.text
        assert "no space" in r.json()["message"].lower(), r.text
        assert list((layout / "snapshots").iterdir()) == []  # the partial snapshot is gone
        assert http.get("/v1/snapshots").json()["total_items"] == 0
        # the source is unharmed and a small snapshot still works
        assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
        assert api.run(http, sid, "rm /root/big; cat /root/small")["stdout"] == "kept\n"
        small = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "fits"})
        if small.status_code == 201:  # the memory image may not fit 16 MiB either: then 507 again
            assert http.delete(f"/v1/snapshot/{small.json()['id']}").status_code == 204
        else:
            assert small.status_code == 507, small.text
    finally:
        api.delete(http, sid)
    still_serving(http)


def test_template_missing_on_disk(http: httpx.Client, layout: Path) -> None:
    sid = api.create(http, template_name=VANISH)["id"]
    stopped = api.create(http, template_name=VANISH)["id"]
    assert http.post(f"/v1/sandbox/{stopped}/stop").status_code == 200
    shutil.rmtree(layout / "templates" / "system--vanish@1")  # the link to the rootfs, not the rootfs
    r = http.post("/v1/sandbox", json={"template_name": VANISH})
    assert r.status_code == 400 and "not found" in r.text, r.text
    start = http.post(f"/v1/sandbox/{stopped}/start")
    assert start.status_code == 500 and "missing on this host" in start.json()["message"], start.text
    assert http.get(f"/v1/sandbox/{stopped}/").json()["state"] == "stopped"
    # a command in the running one needs the template too (its workdir and environment): the
    # same error as the start, and the sandbox stays running
    running = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo still"})
    assert running.status_code == 500 and "missing on this host" in running.json()["message"], running.text
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    for victim in (sid, stopped):
        assert http.delete(f"/v1/sandbox/{victim}/").status_code == 204
    still_serving(http)
