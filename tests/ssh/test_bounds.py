"""What one client may make the SSH gateway hold (issue 15): a login deadline from the TCP accept
(a client that never sends its version string is closed), connections per source address and
in all (refused at accept while others still log in), and an idle deadline that closes a
logged-in connection without session data, keepalives or not, but not a busy one. Its own server
with small limits; the loopback range gives the test several source addresses."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess
from tests.ssh._helpers import access, gateway_port, run_ssh, ssh_argv, ssh_env, ssh_server

pytestmark = [pytest.mark.privileged]

LOGIN_TIMEOUT_S = 15
IDLE_TIMEOUT_S = 6
PER_ADDRESS = 3
TOTAL = 6


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ssh_server(
        "b",
        "--ssh-login-timeout-s", str(LOGIN_TIMEOUT_S), "--ssh-idle-timeout-s", str(IDLE_TIMEOUT_S),
        "--ssh-max-connections-per-address", str(PER_ADDRESS), "--ssh-max-connections", str(TOTAL),
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def grant(server: ServerProcess) -> Iterator[dict[str, Any]]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http)["id"]
        try:
            yield access(http, sid)
        finally:
            api.delete(http, sid)


def connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock


def admitted(sock: socket.socket) -> bool:
    """The gateway sent its version string (admitted), or closed at once (refused)."""
    try:
        return sock.recv(256).startswith(b"SSH-2.0-")
    except ConnectionResetError:
        return False


def test_silent_client_is_closed_within_the_login_timeout(grant: dict[str, Any]) -> None:
    sock = connect(gateway_port(grant), "127.0.0.1")
    started = time.monotonic()
    try:
        assert admitted(sock)
        sock.settimeout(LOGIN_TIMEOUT_S + 15)
        try:
            assert sock.recv(256) == b""  # nothing more, then closed
        except ConnectionResetError:
            pass
        waited = time.monotonic() - started
        assert LOGIN_TIMEOUT_S - 1 <= waited <= LOGIN_TIMEOUT_S + 5, waited
    finally:
        sock.close()


def test_connection_caps_per_address_and_in_all(grant: dict[str, Any]) -> None:
    port = gateway_port(grant)
    held: list[socket.socket] = []
    try:
        held += [connect(port, "127.0.0.1") for _ in range(PER_ADDRESS)]
        assert all(admitted(sock) for sock in held)
        extra = connect(port, "127.0.0.1")
        held.append(extra)
        assert not admitted(extra), "the connection over the per-address cap was admitted"
        # another address still logs in meanwhile
        done = run_ssh(grant, "echo still-in", "-b", "127.0.0.2")
        assert done.stdout == "still-in\n", done
        # fill the gateway from a third address: then any address is refused
        others = [connect(port, "127.0.0.3") for _ in range(TOTAL - PER_ADDRESS)]
        held += others
        assert all(admitted(sock) for sock in others)
        late = connect(port, "127.0.0.4")
        held.append(late)
        assert not admitted(late), "the connection over the total cap was admitted"
    finally:
        for sock in held:
            sock.close()
    # the held connections' room comes back as they close
    deadline = time.monotonic() + 10
    while True:
        sock = connect(port, "127.0.0.1")
        try:
            if admitted(sock):
                break
        finally:
            sock.close()
        assert time.monotonic() < deadline, "closed connections were not released"
        time.sleep(0.2)


def test_idle_connection_is_closed_and_a_busy_one_kept(grant: dict[str, Any]) -> None:
    started = time.monotonic()
    idle = subprocess.Popen(
        ssh_argv(grant, "-N", "-o", "ServerAliveInterval=1"),
        env=ssh_env(grant),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        idle.wait(timeout=IDLE_TIMEOUT_S + 30)
    finally:
        idle.kill()
    waited = time.monotonic() - started
    assert IDLE_TIMEOUT_S <= waited <= IDLE_TIMEOUT_S + 10, waited
    # a command that prints now and then for longer than the idle timeout runs to its end
    busy = run_ssh(grant, f"for i in $(seq {IDLE_TIMEOUT_S + 4}); do echo $i; sleep 1; done")
    assert (busy.returncode, busy.stdout.split()[-1:]) == (0, [str(IDLE_TIMEOUT_S + 4)]), busy
    # a silent one does not
    silent = run_ssh(grant, f"sleep {IDLE_TIMEOUT_S + 10}; echo done")
    assert silent.returncode != 0 and "done" not in silent.stdout, silent
