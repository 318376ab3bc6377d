"""An SSH access expires (agent-services §4): a login works while the access is valid and is
refused once the gateway's clock passed its ``expires_at``, and ``validate`` says so too. Its own
server with a short access lifetime, so the test waits seconds of that clock, not the 30 it
waited beside the other gateway tests (whose accesses must outlive their logins)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.ssh._helpers import access, run_ssh
from tests.ssh._helpers import ssh_server as start_ssh_server

pytestmark = [pytest.mark.privileged]

TTL_S = 6  # room for the first login on a loaded host, and little to wait after it


@pytest.fixture(scope="module")
def ssh_server() -> Iterator[ServerProcess]:
    with start_ssh_server("f", "--ssh-access-ttl-s", str(TTL_S)) as proc:
        yield proc


def _when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_expired_access_is_refused(ssh_server: ServerProcess) -> None:
    with httpx.Client(base_url=ssh_server.base_url, headers=ssh_server.headers, timeout=120) as client:
        sandbox = api.create(client)["id"]
        try:
            grant = access(client, sandbox)
            # the server's lifetime is the access's: the wait below is for this one
            lifetime = _when(grant["expires_at"]) - _when(grant["created_at"])
            assert abs(lifetime.total_seconds() - TTL_S) < 1, grant
            assert run_ssh(grant, "echo before").stdout == "before\n"
            left_s = (_when(grant["expires_at"]) - dt.datetime.now(dt.UTC)).total_seconds()
            time.sleep(max(0.0, left_s) + 1)
            assert run_ssh(grant, "echo after").returncode != 0
            base = f"/v1/sandbox/{sandbox}/ssh/{grant['id']}"
            valid = client.post(f"{base}/validate", json={"password": grant["password"]}).json()
            assert valid["valid"] is False, valid
        finally:
            api.delete(client, sandbox)
