"""Helpers for router tests against the real server: sandbox URLs as ``invoke_url`` builds them
(``http://{id}[-{port}].sbx.localhost:{router_port}{path}``), sent to the router on loopback with
that ``Host`` (no name resolution needed), and ``sandbox_app.py`` started inside a sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests._support import api
from tests._support.server import SANDBOX_DOMAIN, ServerProcess

APP_SOURCE = (Path(__file__).with_name("sandbox_app.py")).read_text()
APP_LOG = "/tmp/requests.log"


def invoke_url(server: ServerProcess, sandbox_id: str, path: str = "/", port: int | None = None) -> str:
    label = sandbox_id if port is None else f"{sandbox_id}-{port}"
    return f"http://{label}.{SANDBOX_DOMAIN}:{server.router_port}{path}"


def websocket_url(server: ServerProcess, sandbox_id: str, path: str = "/", port: int | None = None) -> str:
    return "ws" + invoke_url(server, sandbox_id, path, port)[4:]


def via_router(url: str) -> tuple[str, dict[str, str]]:
    """(path, headers) to send to the router on loopback for ``url``."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else ""), {"host": parts.netloc}


def start_app(http: httpx.Client, sandbox_id: str, port: int = 8080, tag: str = "") -> None:
    """Write ``sandbox_app.py`` into the sandbox with a heredoc and run it in the background."""
    command = (
        f"cat > /tmp/app.py <<'ATOLL_APP'\n{APP_SOURCE}\nATOLL_APP\n"
        f"APP_TAG={tag} nohup python3 /tmp/app.py {port} {APP_LOG} >/tmp/app.out 2>&1 &"
    )
    api.run(http, sandbox_id, command)
    wait_listening(http, sandbox_id, port)


def wait_listening(http: httpx.Client, sandbox_id: str, port: int, timeout: float = 20.0) -> None:
    script = (
        "import socket, sys, time\n"
        f"deadline = time.time() + {timeout}\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=1).close(); sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    result = api.run(http, sandbox_id, f"python3 - <<'EOF'\n{script}EOF", timeout=int(timeout) + 5)
    assert result["exit_code"] == 0, f"nothing listens on {port} in {sandbox_id}: {result}"


def app_log(http: httpx.Client, sandbox_id: str) -> str:
    return str(api.run(http, sandbox_id, f"cat {APP_LOG} 2>/dev/null || true")["stdout"])


@pytest.fixture
def router(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client for the router on loopback; pass ``headers=...via_router(url)[1]``."""
    with httpx.Client(base_url=server.router_url, timeout=120, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def app_sandbox(server: ServerProcess) -> Iterator[str]:
    """One sandbox running ``sandbox_app.py`` on the template's PORT (8080), for a whole module."""
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sandbox_id = str(api.create(http, memory=512)["id"])
        try:
            start_app(http, sandbox_id)
            yield sandbox_id
        finally:
            http.delete(f"/v1/sandbox/{sandbox_id}/")
