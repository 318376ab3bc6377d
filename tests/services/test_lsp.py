"""Language servers in a sandbox (agent-services spec §3) end to end: a real server, a real
sandbox of the default template, the unchanged public leap0 0.8.0 SDK (``leap0_lsp.py`` runs
it under Python 3.12), pyright and typescript-language-server inside the sandbox.

The default template carries both servers (issue 19); on a host whose template predates that,
these tests skip and say so. ``ATOLL_TEST_TEMPLATES_DIR`` points the server at another
template cache (for developing against a template of one's own)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.conformance]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_lsp.py")
TEMPLATE = "system/debian:bookworm"
TEMPLATES_DIR = Path(os.environ.get("ATOLL_TEST_TEMPLATES_DIR", "/var/lib/atoll/templates"))
ROOTFS = TEMPLATES_DIR / "system--debian@bookworm" / "rootfs"
SERVERS = ("usr/local/bin/pyright-langserver", "usr/local/bin/typescript-language-server")


def servers_present() -> bool:
    """Both servers on the template's PATH (symlinks resolved inside its rootfs)."""
    for path in SERVERS:
        entry = ROOTFS / path
        target = os.readlink(entry) if entry.is_symlink() else path
        if not (
            entry.parent / target if not target.startswith("/") else ROOTFS / target.lstrip("/")
        ).exists():
            return False
    return True


def skip_without_servers() -> None:
    # checked once the server is up: it builds the default template first when its recipe changed
    if not servers_present():
        pytest.skip(f"{TEMPLATE} in {TEMPLATES_DIR} has no language servers yet (issue 19's template)")


@pytest.fixture(scope="module")
def lsp_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The session's server, or (``ATOLL_TEST_TEMPLATES_DIR``) one of this module's own."""
    if "ATOLL_TEST_TEMPLATES_DIR" not in os.environ:
        shared: ServerProcess = request.getfixturevalue("server")
        skip_without_servers()
        yield shared
        return
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-lsp-", dir="/var/tmp"))
    proc = ServerProcess(data_dir=data_dir, extra_args=("--templates-dir", str(TEMPLATES_DIR)))
    try:
        proc.start()
        skip_without_servers()
        yield proc
    finally:
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.Client(base_url=proc.base_url, headers=proc.headers, timeout=60) as http,
        ):
            for item in http.get("/v1/sandboxes", params={"page-size": 100}).json().get("items", []):
                http.delete(f"/v1/sandbox/{item['id']}/")
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def lsp_http(lsp_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lsp_server.base_url, headers=lsp_server.headers, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox_id(lsp_server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=lsp_server.base_url, headers=lsp_server.headers, timeout=300) as http:
        r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        yield sid
        http.delete(f"/v1/sandbox/{sid}/")


def new_project(http: httpx.Client, sid: str) -> str:
    project = f"/home/user/proj-{secrets.token_hex(4)}"
    r = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": f"mkdir -p {project}"})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
    return project


def run_leap0(server: ServerProcess, check: str, sid: str, project: str, lang: str = "python") -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    done = subprocess.run(
        [str(LEAP0_PYTHON), str(SCRIPT), server.base_url, server.api_key, check, sid, project, lang],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("lang", ["python", "typescript"])
def test_completions_and_symbols_then_stop_leaves_nothing(
    lsp_server: ServerProcess, lsp_http: httpx.Client, sandbox_id: str, lang: str
) -> None:
    server, http = lsp_server, lsp_http
    project = new_project(http, sandbox_id)
    seen = run_leap0(server, "language", sandbox_id, project, lang)
    assert seen["start"] is True and seen["stop"] is True
    assert seen["completion_envelope"]["jsonrpc"] == "2.0", seen
    assert seen["completion_envelope"]["error"] in (None, "None"), seen
    expected = "path" if lang == "python" else "toUpperCase"
    assert expected in seen["completions"], seen["completions"][:50]
    assert {"Greeter", "alpha", "beta"} <= set(seen["symbols"]), seen["symbols"]
    assert seen["after_stop"]["status"] == 409, seen["after_stop"]
    left = run_leap0(server, "processes", sandbox_id, project, lang)
    assert left["left"] == [], left["all"]


def test_a_crashed_server_is_reported_promptly_and_can_start_again(
    lsp_server: ServerProcess, lsp_http: httpx.Client, sandbox_id: str
) -> None:
    server, http = lsp_server, lsp_http
    project = new_project(http, sandbox_id)
    seen = run_leap0(server, "crash", sandbox_id, project)
    assert seen["start"] is True and seen["kill"] == 0
    for attempt in ("first", "second"):
        assert seen[attempt]["status"] == 409, seen
        assert "not running" in seen[attempt]["message"], seen
        assert seen[attempt]["took_s"] < 5, seen
    assert seen["restart"] is True
    assert "path" in seen["after_restart"]
    assert run_leap0(server, "processes", sandbox_id, project)["left"] == []


def _host_processes_naming(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if marker in cmdline or cwd.endswith(marker):
            found.append(f"{entry.name}: {cmdline[:200]} (cwd {cwd})")
    return found


def test_deleting_the_sandbox_leaves_no_language_server_on_the_host(
    lsp_server: ServerProcess, lsp_http: httpx.Client
) -> None:
    server, http = lsp_server, lsp_http
    r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 1024})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        project = new_project(http, sid)
        assert run_leap0(server, "start_only", sid, project)["start"] is True
        if not server.runtime or server.runtime != "runsc":  # gVisor's processes live in its sentry
            assert _host_processes_naming(project), "the bridge should run (visible on the host)"
    finally:
        assert http.delete(f"/v1/sandbox/{sid}/").status_code in (200, 204)
    deadline = time.monotonic() + 10
    while (left := _host_processes_naming(project)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    assert_no_leaks(server)


def test_bad_bodies_name_the_field_and_unknown_servers_conflict(
    lsp_http: httpx.Client, sandbox_id: str
) -> None:
    http = lsp_http
    base = f"/v1/sandbox/{sandbox_id}/lsp"
    r = http.post(f"{base}/start", json={"language_id": "cobol", "path_to_project": "/home/user"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "language_id", r.text
    r = http.post(f"{base}/start", json={"language_id": "python"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "path_to_project", r.text
    r = http.post(f"{base}/start", json={"language_id": "python", "path_to_project": "/no/such/dir"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "path_to_project", r.text
    body = {"language_id": "python", "path_to_project": "/home/user", "uri": "file:///home/user/x.py"}
    r = http.post(f"{base}/completions", json={**body, "position": {"line": 0}})
    assert r.status_code == 400 and "position" in r.json()["errors"][0]["field"], r.text
    r = http.post(f"{base}/document-symbols", json={**body, "path_to_project": "/home/user/never"})
    assert r.status_code == 409 and "lsp/start" in r.json()["message"], r.text
    r = http.post(f"{base}/did-open", json={**body, "uri": "http://x/y.py"})
    assert r.status_code in (400, 409), r.text
    r = http.post(
        "/v1/sandbox/sbxnosuchsandbox0/lsp/start", json={"language_id": "python", "path_to_project": "/"}
    )
    assert r.status_code == 404, r.text


def test_a_call_on_a_paused_sandbox_resumes_it_and_the_server_answers(
    lsp_server: ServerProcess, lsp_http: httpx.Client
) -> None:
    http = lsp_http
    r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 1024})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        project = new_project(http, sid)
        base = f"/v1/sandbox/{sid}/lsp"
        server = {"language_id": "python", "path_to_project": project}
        doc = {**server, "uri": f"file://{project}/main.py"}
        assert http.post(f"{base}/start", json=server).json() == {"success": True}
        assert http.post(f"{base}/did-open", json={**doc, "text": "import os\nos.pa"}).status_code == 204
        r = http.post(f"/v1/sandbox/{sid}/pause")
        assert r.status_code == 201, r.text
        assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "paused"
        r = http.post(f"{base}/completions", json={**doc, "position": {"line": 1, "character": 5}})
        assert r.status_code == 200, r.text
        envelope = r.json()
        assert envelope["jsonrpc"] == "2.0" and "error" not in envelope, envelope
        result = envelope["result"]
        items = result["items"] if isinstance(result, dict) else result
        assert "path" in [item["label"] for item in items]
        assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    finally:
        http.delete(f"/v1/sandbox/{sid}/")
    assert_no_leaks(lsp_server)
