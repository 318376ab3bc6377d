"""kill -9 of the server in the middle of 30 concurrent creates and deletes, then a restart:
every sandbox is either running and reachable or cleanly gone, and the host holds nothing else."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
CREATES = 30
DELETES = 30


def reachable(ip: str) -> bool:
    """The host reaches the sandbox's address: a closed port answers at once (RST)."""
    with socket.socket() as s:
        s.settimeout(3)
        return s.connect_ex((ip, 1)) in (0, 111)  # connected, or ECONNREFUSED


def test_kill9_during_concurrent_creates_and_deletes(spare: SpareServer) -> None:
    with spare("--netns-pool-size", "4") as server:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
            doomed = []
            with ThreadPoolExecutor(8) as pool:
                doomed = list(pool.map(lambda _: api.create(http)["id"], range(DELETES)))
            kill_and_restart_mid_burst(server, doomed)
            check_after_restart(server, http, doomed)


def kill_and_restart_mid_burst(server: ServerProcess, doomed: list[str]) -> None:
    started = threading.Barrier(CREATES + DELETES + 1)
    outcomes: list[str] = []

    def create() -> None:
        started.wait()
        try:
            r = httpx.post(f"{server.base_url}/v1/sandbox", json={}, headers=server.headers, timeout=60)
            outcomes.append(f"create {r.status_code}")
        except httpx.HTTPError as exc:
            outcomes.append(f"create {type(exc).__name__}")

    def delete(sid: str) -> None:
        started.wait()
        try:
            r = httpx.delete(f"{server.base_url}/v1/sandbox/{sid}/", headers=server.headers, timeout=60)
            outcomes.append(f"delete {r.status_code}")
        except httpx.HTTPError as exc:
            outcomes.append(f"delete {type(exc).__name__}")

    threads = [threading.Thread(target=create) for _ in range(CREATES)]
    threads += [threading.Thread(target=delete, args=(sid,)) for sid in doomed]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.4)  # some creates and deletes done, many in flight
    server.kill9()
    for t in threads:
        t.join(timeout=90)
    assert any("Error" in o for o in outcomes), f"nothing was in flight at the kill: {outcomes}"
    server.start()


def check_after_restart(server: ServerProcess, http: httpx.Client, doomed: list[str]) -> None:
    items = http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]
    states = {i["id"]: i["state"] for i in items}
    assert set(states.values()) <= {"running"}, states
    for sid in states:  # running and reachable: a command runs, and its address answers
        assert api.run(http, sid, "echo up")["stdout"] == "up\n"
        assert reachable(api.sandbox_ip(http, sid)), sid
    for sid in doomed:  # a delete either finished or never started
        r = http.get(f"/v1/sandbox/{sid}/")
        assert r.status_code == 404 or r.json()["state"] == "running", r.text
    # and the host holds nothing else: checked when the spare server's block exits
