"""Attempts on the sandbox router from the outside: requests crafted so that the router and the
sandbox's server disagree about where a request goes (two ``Host`` headers, an absolute-form
target naming another sandbox), and credentials meant for Atoll or a proxy that would reach the
sandbox's code. The sandbox runs ``tests/router/sandbox_app.py``, which echoes what it got."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests._support import api
from tests._support.server import SANDBOX_DOMAIN, ServerProcess
from tests.router.conftest import app_log, start_app
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="module")
def apps(server: ServerProcess) -> Iterator[tuple[str, str]]:
    """Two sandboxes running the echo app: the caller's own and another one."""
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        own, other = api.create(http)["id"], api.create(http)["id"]
        try:
            for sid in (own, other):
                start_app(http, sid)
            yield own, other
        finally:
            for sid in (own, other):
                http.delete(f"/v1/sandbox/{sid}/")


def host_of(server: ServerProcess, sandbox_id: str) -> str:
    return f"{sandbox_id}.{SANDBOX_DOMAIN}:{server.router_port}"


def exchange(server: ServerProcess, request: str) -> tuple[int, bytes]:
    """Send one raw request to the router; (status, body) of its answer."""
    with socket.create_connection(("127.0.0.1", server.router_port), timeout=30) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.attempt("route with two Host headers (the router and the app would each pick one)")
def test_duplicate_host(
    http: httpx.Client, server: ServerProcess, apps: tuple[str, str], blocked: Blocked
) -> None:
    own, other = apps
    marker = "/echo?duplicate-host"
    for first, second in ((own, other), (other, own)):
        status, _ = exchange(
            server,
            f"GET {marker} HTTP/1.1\r\nHost: {host_of(server, first)}\r\nHost: {host_of(server, second)}\r\n"
            f"Authorization: Bearer {server.api_key}\r\nConnection: close\r\n\r\n",
        )
        assert status == 400
    assert marker not in app_log(http, own) and marker not in app_log(http, other)
    blocked("400 before routing: one Host header or none")


@pytest.mark.attempt("absolute-form request naming another sandbox than the Host header")
def test_absolute_form_host_mismatch(
    http: httpx.Client, server: ServerProcess, apps: tuple[str, str], blocked: Blocked
) -> None:
    own, other = apps
    marker = "/echo?absolute-form"
    key = f"Authorization: Bearer {server.api_key}\r\nConnection: close\r\n"
    status, _ = exchange(
        server,
        f"GET http://{host_of(server, other)}{marker} HTTP/1.1\r\nHost: {host_of(server, own)}\r\n{key}\r\n",
    )
    assert status == 400
    assert marker not in app_log(http, own) and marker not in app_log(http, other)
    # the same host in both: routed, and the app gets the origin form
    status, body = exchange(
        server,
        f"GET http://{host_of(server, own)}{marker} HTTP/1.1\r\nHost: {host_of(server, own)}\r\n{key}\r\n",
    )
    assert status == 200 and json.loads(body)["path"] == marker
    blocked("400 when the request target's host and the Host header differ")


@pytest.mark.attempt("read credentials the client sent to the router (API key, proxy auth)")
def test_credentials_never_reach_the_sandbox(
    server: ServerProcess, apps: tuple[str, str], blocked: Blocked
) -> None:
    own, _ = apps
    secrets = {
        "authorization": f"Bearer {server.api_key}",
        "leap0-authorization": server.api_key,
        "x-api-key": "atl_secret_x_api_key",
        "proxy-authorization": "Basic dXNlcjpzZWNyZXQ=",
    }
    with httpx.Client(base_url=server.router_url, timeout=60, trust_env=False) as router:
        for name, value in secrets.items():
            headers = {"host": host_of(server, own), name: value}
            if name not in ("authorization", "leap0-authorization"):
                headers["authorization"] = secrets["authorization"]
            r = router.get("/echo", headers=headers)
            assert r.status_code == 200, r.text
            seen = r.json()["headers"]
            assert not set(seen) & set(secrets), seen
            assert not any(v in json.dumps(seen) for v in secrets.values()), seen
    blocked("stripped by the router: authorization, leap0-authorization, x-api-key, proxy-authorization")
