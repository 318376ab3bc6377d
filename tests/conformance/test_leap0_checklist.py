"""Wire-protocol §12, item by item, with the public leap0==0.8.0 SDK against `atoll serve`.

Where each item is checked:

| item | what | where |
|---|---|---|
| 1 | Bearer, raw and leap0-authorization keys; 401 | test_leap0_sdk (Bearer, leap0, bad key); here (raw) |
| 2 | exact paths, no redirects, base-URL prefix | here, through a prefix-stripping proxy |
| 3, 6, 7 | create defaults, env vars, get | test_leap0_sdk |
| 4 | SDK-side validation; raw 400 | test_leap0_sdk (SDK), here (raw) |
| 5 | policy echo; enforcement | here (echo); enforcement: tests/network/test_egress.py |
| 8 | list keys and item fields | here |
| 9 | pause, 409 on a second pause, resume by a sandbox-host request | test_leap0_sdk, here (router) |
| 10 | delete 204 then 404; 409 mid-transition | test_leap0_sdk, here |
| 11 | timeout deletes, or pauses with auto_pause | here |
| 12 | org limit 409/429; rate limit 429 + Retry-After, retryable | here (a server with those limits) |
| 13, 14 | snapshots: create, duplicate, kill after, restore, list, delete | here |
| 15, 17, 19 | templates, filesystem, PTY | test_leap0_files_pty |
| 16 | process results; prompt return at timeout | test_leap0_sdk, here |
| 18 | invoke_url shape; routing with Bearer or raw keys | here (HTTP); SSE, WebSocket: tests/router |
| 20 | code interpreter (health, state across calls, streaming) | tests/services/test_code_interpreter.py |
| 21 | presigned URL works without a key until deleted | here |
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests._support.server import ServerProcess, spare_server

pytestmark = [pytest.mark.privileged, pytest.mark.conformance, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_checklist.py")


def leap0(base_url: str, key: str, check: str, arg: str = "") -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    done = subprocess.run(
        [str(LEAP0_PYTHON), str(SCRIPT), base_url, key, check, arg],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def needs_checkpoint(server: ServerProcess) -> None:
    if not httpx.get(f"{server.base_url}/v1/health", timeout=10).json()["checkpoint"]:
        pytest.skip("snapshots need runc with a working CRIU on this host")


def via_router(server: ServerProcess, url: str) -> httpx.Response:
    """GET a sandbox URL (https://{label}.sbx.local/...) through the test server's plain-HTTP router."""
    parts = urlsplit(url)
    label = parts.hostname.split(".")[0] if parts.hostname else ""
    with httpx.Client(base_url=server.router_url, timeout=30, trust_env=False) as router:
        return router.get(parts.path or "/", headers={"host": f"{label}.sbx.localhost:{server.router_port}"})


# 1, 2 ----------------------------------------------------------------------------------------
def test_raw_key_in_authorization(server: ServerProcess) -> None:
    assert leap0(server.base_url, server.api_key, "auth_raw") == {"total_items": True}


class PrefixProxy(ThreadingHTTPServer):
    """http://127.0.0.1:PORT/atoll/... -> the server's /...; records every status it relays."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.statuses: list[int] = []
        super().__init__(("127.0.0.1", 0), _Relay)


class _Relay(BaseHTTPRequestHandler):
    server: PrefixProxy

    def _relay(self) -> None:
        if not self.path.startswith("/atoll/"):
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = httpx.request(
            self.command,
            self.server.upstream + self.path[len("/atoll") :],
            headers=headers,
            content=body,
            timeout=120,
        )
        self.server.statuses.append(r.status_code)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_DELETE = do_PATCH = _relay

    def log_message(self, *args: object) -> None:
        pass


def test_paths_no_redirects_and_a_base_url_prefix(server: ServerProcess) -> None:
    proxy = PrefixProxy(server.base_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        seen = leap0(f"http://127.0.0.1:{proxy.server_address[1]}/atoll", server.api_key, "paths")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert seen == {"state": "running", "item": ["created_at", "id", "state", "template_id"]}
    assert proxy.statuses and not [s for s in proxy.statuses if 300 <= s < 400], proxy.statuses


# 4, 5 ----------------------------------------------------------------------------------------
def test_invalid_values_sent_raw_get_400(http: httpx.Client) -> None:
    for body, field in (({"vcpu": 9}, "vcpu"), ({"memory": 513}, "memory"), ({"timeout": 0}, "timeout")):
        r = http.post("/v1/sandbox", json=body)
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"message", "errors"}
        assert [e["field"] for e in r.json()["errors"]] == [field]


def test_network_policy_is_echoed(server: ServerProcess) -> None:
    assert leap0(server.base_url, server.api_key, "policies") == {
        "deny": {"mode": "deny-all"},
        "custom": {"mode": "custom", "allow_domains": ["api.example.com"], "allow_cidrs": ["192.0.2.0/24"]},
        "none": None,  # nothing given, nothing echoed; it behaves as allow-all (tests/network)
    }


# 9, 10, 11 -----------------------------------------------------------------------------------
def test_a_sandbox_host_request_resumes_a_paused_sandbox(server: ServerProcess) -> None:
    paused = leap0(server.base_url, server.api_key, "pause_and_router")
    assert paused["state"] == "paused"
    r = via_router(server, f"https://{paused['id']}-8080.sbx.local/")
    r_auth = httpx.get(
        f"{server.router_url}/",
        headers={"host": server.sandbox_host(paused["id"], 8080), **server.headers},
        timeout=30,
        trust_env=False,
    )
    assert r.status_code == 401 and r_auth.status_code in (502, 503, 504), (r.text, r_auth.text)
    assert leap0(server.base_url, server.api_key, "state_of", paused["id"]) == {"state": "running"}
    assert leap0(server.base_url, server.api_key, "delete", paused["id"]) == {"deleted": True}


def test_delete_mid_transition_is_409(server: ServerProcess) -> None:
    needs_checkpoint(server)
    during = leap0(server.base_url, server.api_key, "delete_mid_transition")["during"]
    assert (during["type"], during["status"]) == ("Leap0ConflictError", 409), during


def test_timeout_ends_or_auto_pauses(server: ServerProcess) -> None:
    seen = leap0(server.base_url, server.api_key, "timeouts")
    assert seen["plain"] in ("not found", "deleted"), seen
    assert seen["auto_pause"] == "paused", seen
    leap0(server.base_url, server.api_key, "delete", seen["ids"][1])


# 12 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited() -> Iterator[ServerProcess]:
    """At most one sandbox per organisation, and the default rate limit (1000 per 60 s)."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-limits-", dir="/var/tmp"))
    proc = spare_server(data_dir, "--max-sandboxes-per-org", "1", "--rate-limit", "1000")
    proc.start()
    try:
        yield proc
    finally:
        proc.delete_everything()
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_organisation_limit(limited: ServerProcess) -> None:
    seen = leap0(limited.base_url, limited.api_key, "org_limit")
    assert seen["stopped"] == "stopped"
    assert (seen["create"]["type"], seen["create"]["status"]) == ("Leap0ConflictError", 409), seen
    assert (seen["start"]["type"], seen["start"]["status"]) == ("Leap0RateLimitError", 429), seen
    assert seen["start"]["retryable"] is True
    if "skipped" not in seen["restore"]:  # restore needs a checkpointing runtime
        assert (seen["restore"]["type"], seen["restore"]["status"]) == ("Leap0RateLimitError", 429), seen


def test_rate_limit(limited: ServerProcess) -> None:
    key = limited.mint_key("org_rate")
    over = leap0(limited.base_url, key, "rate_limit", "1000")["over"]
    assert (over["type"], over["status"], over["retryable"]) == ("Leap0RateLimitError", 429, True), over
    assert over["retry_after"] and 1 <= int(over["retry_after"]) <= 60, over


# 13, 14, 16 ----------------------------------------------------------------------------------
def test_snapshots(server: ServerProcess) -> None:
    needs_checkpoint(server)
    seen = leap0(server.base_url, server.api_key, "snapshots")
    assert (seen["name"], seen["id"], seen["source"]) == ("n1", True, "running")
    assert (seen["duplicate"]["type"], seen["duplicate"]["status"]) == ("Leap0ConflictError", 409)
    assert seen["restored"] == {"new_id": True, "state": "running", "file": "disk\n", "process": "alive"}
    assert seen["listed"] == ["n1", True]
    assert seen["killed_source"] in ("not found", "deleted")
    assert seen["deleted"] == [None, None]


def test_exec_timeout_returns_promptly(server: ServerProcess) -> None:
    seen = leap0(server.base_url, server.api_key, "exec_timeout")
    assert seen["seconds"] < 10, seen
    assert seen["exit_code"] == 124, seen


# 18, 21 --------------------------------------------------------------------------------------
def test_sandbox_urls_and_presigned_urls(server: ServerProcess) -> None:
    seen = leap0(server.base_url, server.api_key, "urls")
    sid = seen["id"]
    assert seen["invoke"] == f"https://{sid}-3000.sbx.local/h"
    with httpx.Client(base_url=server.router_url, timeout=30, trust_env=False) as router:
        host = {"host": server.sandbox_host(sid, 8080)}
        for auth in (f"Bearer {server.api_key}", server.api_key):  # Bearer or raw key
            r = router.get("/", headers={**host, "authorization": auth})
            assert (r.status_code, r.text) == (200, "served\n"), r.text
    url = seen["presigned"]["url"]
    parts = urlsplit(url)
    assert parts.hostname and parts.hostname.endswith(".sbx.localhost"), url
    with httpx.Client(timeout=30, trust_env=False) as anonymous:  # no key at all
        r = anonymous.get(f"{server.router_url}/", headers={"host": parts.netloc})
        assert (r.status_code, r.text) == (200, "served\n"), r.text
        leap0(server.base_url, server.api_key, "delete_presigned", f"{sid},{seen['presigned']['id']}")
        assert anonymous.get(f"{server.router_url}/", headers={"host": parts.netloc}).status_code == 404
    leap0(server.base_url, server.api_key, "delete", sid)
