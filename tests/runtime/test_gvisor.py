"""The gVisor backend (runsc) beside an OCI one on one server: a template picks its backend, a
gVisor sandbox sees gVisor's kernel and not the host's, what a command leaves running survives a
checkpoint, and the process limit holds inside."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.server.settings import DEFAULT_DATA_DIR
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME, slug
from tests._support import api, counter
from tests._support.leaks import assert_no_leaks
from tests._support.server import PIDS_LIMIT, ServerProcess, serving, side_server

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(
        shutil.which("runsc") is None, reason="runsc is missing: bash scripts/setup-gvisor.sh"
    ),
]

GVISOR_TEMPLATE = "system/debian:gvisor"
COUNT_PROCESSES = "ls -d /proc/[0-9]* | wc -l"


def _template(templates: Path, name: str, runtime: str) -> None:
    """A template sharing the cached Debian root filesystem, on the given backend."""
    shared = DEFAULT_DATA_DIR / "templates" / slug(DEFAULT_TEMPLATE_NAME) / "rootfs"
    directory = templates / slug(name)
    directory.mkdir(parents=True)
    (directory / "rootfs").symlink_to(shared)
    meta = {"id": f"tpl-test-{slug(name)}", "name": name, "runtime": runtime}
    (directory / "template.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def mixed() -> Iterator[ServerProcess]:
    """A server whose default backend is runc, with one template that asks for gVisor."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-gvisor-", dir="/var/tmp"))
    templates = data_dir / "templates"
    _template(templates, DEFAULT_TEMPLATE_NAME, "")
    _template(templates, GVISOR_TEMPLATE, "runsc")
    server = side_server(
        data_dir,
        "gv",
        2,
        runtime="runc",
        extra_args=("--templates-dir", str(templates), "--no-build-template"),
    )
    try:
        with serving(server):
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def http(mixed: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mixed.base_url, headers=mixed.headers, timeout=120) as client:
        yield client
    assert_no_leaks(mixed)


def test_a_template_picks_gvisor_and_the_sandbox_sees_gvisors_kernel(http: httpx.Client) -> None:
    sandbox = api.create(http, template_name=GVISOR_TEMPLATE)
    try:
        assert sandbox["runtime"] == "runsc"
        assert http.get(f"/v1/sandbox/{sandbox['id']}/").json()["runtime"] == "runsc"
        out = api.run(http, sandbox["id"], "uname -a; dmesg")
        assert out["exit_code"] == 0, out
        assert os.uname().release not in out["stdout"]  # not the host's kernel
        assert "Starting gVisor" in out["stdout"]  # gVisor's own kernel log
    finally:
        api.delete(http, sandbox["id"])


def test_the_server_default_stays_an_oci_runtime(http: httpx.Client) -> None:
    sandbox = api.create(http)
    try:
        assert sandbox["runtime"] == "runc"
        assert api.run(http, sandbox["id"], "uname -r")["stdout"].strip() == os.uname().release
    finally:
        api.delete(http, sandbox["id"])


def test_what_a_command_leaves_running_survives_a_checkpoint(http: httpx.Client) -> None:
    sid = api.create(http, template_name=GVISOR_TEMPLATE, memory=512)["id"]
    try:
        api.run(http, sid, counter.START)
        before = counter.read(http, sid)
        paused = http.post(f"/v1/sandbox/{sid}/pause").json()
        assert paused["pause_kind"] == "checkpoint", paused
        time.sleep(1)
        after = counter.read(http, sid)  # resumes by restore
        assert before < after < before + 8, (before, after)  # continued, not restarted
        # commands run under the sandbox's init (so a restore keeps them), with its seccomp filter
        status = api.run(http, sid, "grep -E '^(Seccomp|PPid):' /proc/self/status")["stdout"]
        assert "Seccomp:\t2" in status
    finally:
        api.delete(http, sid)


def test_processes_inside_are_limited_and_the_host_cgroup_has_room_for_the_sentry(
    http: httpx.Client, mixed: ServerProcess
) -> None:
    sid = api.create(http, template_name=GVISOR_TEMPLATE)["id"]
    try:
        limit = api.run(
            http, sid, "python3 -c 'import resource; print(resource.getrlimit(resource.RLIMIT_NPROC))'"
        )
        assert limit["stdout"].strip() == f"({PIDS_LIMIT}, {PIDS_LIMIT})"
        pids_max = api.cgroup_file(mixed.instance, sid, v1=("pids", "pids.max"), v2="pids.max")
        assert int(pids_max.read_text()) >= 1024  # it counts the sentry's and the stubs' threads
        bomb = api.run(http, sid, "f() { f | f & }; f; sleep 300", timeout=6)
        assert bomb["exit_code"] == 124  # the timeout ends the bomb's whole session
        # the sandbox works again once the sentry has reaped the bomb's last members (under
        # systrap that can outlast the kill by a moment): the first commands may find no room
        # meanwhile a command gets 503 + Retry-After (no room for a process), never a 500
        tries: list[httpx.Response] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "echo alive"})
            tries.append(r)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200 and r.json()["stdout"] == "alive\n":
                break
            time.sleep(float(r.headers.get("retry-after", 0.5)))
        assert tries[-1].status_code == 200 and tries[-1].json()["stdout"] == "alive\n", tries[-1].text
        # the count's own pipeline may still find no room while the sentry reaps the last members
        count = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": COUNT_PROCESSES})
            assert r.status_code in (200, 503), r.text
            count = r.json()["stdout"].strip() if r.status_code == 200 else ""
            if count.isdigit() and int(count) < 20:
                break
            time.sleep(0.5)
        assert count.isdigit() and int(count) < 20, f"{count!r} processes: the bomb is not gone"
        print(f"commands until the sandbox answered again: {len(tries)}")
    finally:
        api.delete(http, sid)
