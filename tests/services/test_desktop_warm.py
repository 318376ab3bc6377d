"""Desktops from the warm pool: a server keeping one booted desktop ready hands it out on a
create, already up (its status is ``running`` at the first look, with all four processes), and
boots the next one in the background."""

from __future__ import annotations

import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support.server import SANDBOX_DOMAIN, ServerProcess, side_server
from tests.services.conftest import template_present

pytestmark = [pytest.mark.privileged]

TEMPLATE = "system/desktop:v0.1.0"
WARM_ARGS = ("--warm-pool-size", "1", "--warm-template", TEMPLATE, "--warm-desktop-pool-size", "1")


@pytest.fixture(scope="module")
def warm_server() -> Iterator[ServerProcess]:
    assert template_present("system--desktop@v0.1.0"), "make test builds system/desktop first"
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-desktop-warm-", dir="/var/tmp"))
    server = side_server(data_dir, "dw", 1, extra_args=WARM_ARGS)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def warm_ready(http: httpx.Client) -> int:
    return int(http.get("/v1/health").json()["warm_pool_ready"])


def wait_for_warm(http: httpx.Client, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while warm_ready(http) < 1:
        assert time.monotonic() < deadline, "the warm pool did not boot a desktop"
        time.sleep(0.5)


def test_a_create_claims_a_booted_desktop_that_answers_at_once(warm_server: ServerProcess) -> None:
    with httpx.Client(base_url=warm_server.base_url, headers=warm_server.headers, timeout=300) as http:
        wait_for_warm(http)
        ca_file = Path(warm_server.data_dir) / "ca.pem"
        ca_file.write_bytes(http.get("/v1/ca.pem").content)
        r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        try:
            assert warm_ready(http) == 0, "the create did not take the warm desktop"
            base = f"https://{sid}.{SANDBOX_DOMAIN}:{warm_server.router_port}"
            tls = ssl.create_default_context(cafile=str(ca_file))
            with httpx.Client(base_url=base, headers=warm_server.headers, verify=tls, timeout=60) as desk:
                status = desk.get("/api/status").json()  # the first look, no waiting
                assert (status["status"], status["running"]) == ("running", 4), status
                shot = desk.get("/api/screenshot")
                assert shot.status_code == 200 and shot.content[:4] == b"\x89PNG"
            # the claim applied this create's limits (the warm boot had the maximum)
            info = http.get(f"/v1/sandbox/{sid}/").json()
            assert (info["memory"], info["vcpu"]) == (2048, 2), info
            # a create with its own environment is never served from the pool: the desktop's
            # processes would not have had it
            wait_for_warm(http)
            r = http.post(
                "/v1/sandbox",
                json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2, "env_vars": {"A": "1"}},
            )
            assert r.status_code == 201, r.text
            assert warm_ready(http) == 1, "a create with env_vars took the warm desktop"
            http.delete(f"/v1/sandbox/{r.json()['id']}/")
        finally:
            http.delete(f"/v1/sandbox/{sid}/")
