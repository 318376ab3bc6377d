"""Escape attempts on the exec channel: Atoll connects from the host to the agent's socket inside
the sandbox (atoll/runtime/agent.py), so the sandbox controls the path and whoever answers."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import RUNTIME
from tests.security.conftest import Blocked

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(RUNTIME == "runsc", reason="gVisor sandboxes run commands without the agent"),
]


class HostSocket:
    """A unix socket on the host that records every connection it gets."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="atoll-agent-trap-"))
        self.path = self.dir / "trap.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.received: list[bytes] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.received.append(conn.recv(65536) or b"(connected)")
                except TimeoutError:
                    self.received.append(b"(connected)")

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.listener.close()
        self.path.unlink(missing_ok=True)
        self.dir.rmdir()


@pytest.fixture
def host_socket() -> Iterator[HostSocket]:
    trap = HostSocket()
    yield trap
    trap.close()


@pytest.mark.attempt("point Atoll's exec connection at a host socket (a link in place of the agent's)")
def test_planted_link_to_a_host_socket(
    http: httpx.Client, victim: str, host_socket: HostSocket, blocked: Blocked
) -> None:
    assert api.run(http, victim, "echo via-agent")["stdout"] == "via-agent\n"
    for target in (str(host_socket.path), f"/proc/{os.getpid()}/root{host_socket.path}", "/proc/1/root/run"):
        planted = api.run(
            http, victim, f"rm -f /.atoll/run/agent.sock && ln -s {target} /.atoll/run/agent.sock && echo ok"
        )
        assert planted["stdout"] == "ok\n", planted
        # the next commands still run (through the runtime's exec), and the host socket hears nothing
        after = api.run(http, victim, "readlink /.atoll/run/agent.sock")
        assert after["exit_code"] == 0 and after["stdout"].strip() == target, after
    assert host_socket.received == []
    blocked("the socket is opened with openat2(RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS) and must be a socket")


FAKE_AGENT = r"""
import os, socket
path = "/.atoll/run/agent.sock"
os.unlink(path)
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8)
if os.fork():
    os._exit(0)
os.setsid()
for _ in range(3):
    c, _ = s.accept()
    c.recv(65536)
    # forged sizes far beyond the output cap, then a trickle
    c.sendall(b"R 1\nX 0 99999999999999 99999999999999\n" + b"A" * 1000)
    c.close()
"""


@pytest.mark.attempt("answer Atoll's exec requests with a fake agent (forged sizes, endless output)")
def test_fake_agent_cannot_hurt_the_server(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    api.run(http, victim, f"python3 -c '{FAKE_AGENT}'")
    forged = api.run(http, victim, "echo never-runs")
    # the reply is refused as a whole: nothing of it is taken as the command's output
    assert forged["stdout"] == "" and forged["exit_code"] == 137, forged
    assert http.get("/v1/health").status_code == 200
    blocked("replies are parsed as untrusted: sizes beyond the output cap are refused, nothing is read")
