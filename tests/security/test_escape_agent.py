"""Escape attempts on the exec channel: Atoll connects from the host to the agent inside the
sandbox (atoll/runtime/agent.py): in an OCI sandbox through a socket file the sandbox controls,
in a gVisor one through runsc's port forwarding to the sandbox's loopback. Either way the sandbox
controls whoever answers."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.runtime.gvisor_exec import AGENT_PORT
from tests._support import api
from tests._support.runtimes import GVISOR
from tests._support.server import ServerProcess
from tests.security._inside import SYSCALL, py_json
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


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


@pytest.mark.skipif(GVISOR, reason="a gVisor sandbox's agent has no socket file (see the port tests)")
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
if os.path.exists("/.atoll/run/agent.sock"):  # OCI: the socket file, which the sandbox owns
    os.unlink("/.atoll/run/agent.sock")
    s = socket.socket(socket.AF_UNIX); s.bind("/.atoll/run/agent.sock")
else:  # gVisor: the agent port on the loopback of the sandbox, held by PID 1
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", AGENT_PORT))
    except OSError as e:
        print("bind:", e.strerror); raise SystemExit
s.listen(8)
print("listening", flush=True)
if os.fork():
    os._exit(0)
os.setsid()
for _ in range(3):
    c, _ = s.accept()
    c.recv(65536)
    # forged sizes far beyond the output cap, then a trickle
    c.sendall(b"R 1\nX 0 99999999999999 99999999999999\n" + b"A" * 1000)
    c.close()
""".replace("AGENT_PORT", str(AGENT_PORT))


@pytest.mark.attempt("answer Atoll's exec requests with a fake agent (forged sizes, endless output)")
def test_fake_agent_cannot_hurt_the_server(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    planted = api.run(http, victim, f"python3 -c '{FAKE_AGENT}'")
    if GVISOR:
        # the agent (PID 1, which the sandbox cannot kill) holds the port: no one can take it over
        assert planted["stdout"] == "bind: Address already in use\n", planted
        assert api.run(http, victim, "echo still-the-agent")["stdout"] == "still-the-agent\n"
        blocked("PID 1 holds the agent's port; the sandbox cannot bind it or kill PID 1")
        return
    assert planted["stdout"] == "listening\n", planted
    forged = api.run(http, victim, "echo never-runs")
    # the reply is refused as a whole: nothing of it is taken as the command's output
    assert forged["stdout"] == "" and forged["exit_code"] == 137, forged
    assert http.get("/v1/health").status_code == 200
    blocked("replies are parsed as untrusted: sizes beyond the output cap are refused, nothing is read")


def connect(host: str, port: int) -> str:
    """Code for inside a sandbox: prints "open" or "closed" for a TCP connect to (host, port)."""
    return (
        "import json, socket\n"
        "s = socket.socket(); s.settimeout(3)\n"
        f"print(json.dumps('open' if s.connect_ex(({host!r}, {port})) == 0 else 'closed'))\n"
    )


@pytest.mark.skipif(not GVISOR, reason="an OCI sandbox's agent listens on a socket file, not a port")
@pytest.mark.attempt("reach a gVisor sandbox's agent port from outside (a neighbour, the host, the router)")
def test_gvisor_agent_port_is_not_reachable_from_outside(
    http: httpx.Client, server: ServerProcess, pair: tuple[str, str], blocked: Blocked
) -> None:
    neighbour, target = pair
    address = api.sandbox_ip(http, target)
    # it listens: the target's own processes reach it on their loopback
    assert py_json(http, target, connect("127.0.0.1", AGENT_PORT)) == "open"
    assert py_json(http, neighbour, connect(address, AGENT_PORT)) == "closed"
    with socket.socket() as from_host:
        from_host.settimeout(3)
        assert from_host.connect_ex((address, AGENT_PORT)) != 0
    with httpx.Client(base_url=server.router_url, timeout=30, trust_env=False) as router:
        routed = router.get("/", headers={**server.headers, "host": server.sandbox_host(target, AGENT_PORT)})
    assert routed.status_code >= 500 or routed.status_code == 404, routed.text
    assert "never-runs" not in routed.text
    blocked("the agent is bound to the sandbox's loopback; only runsc's port forwarding reaches it")


# ptrace(2) on PID 1 (the agent), then its /proc files; detaches at once if an attach worked
PTRACE_PID1 = (
    SYSCALL
    + """
import json, os
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
out = {}
for name, request in (("attach", PTRACE_ATTACH), ("seize", PTRACE_SEIZE)):
    rc, err = sc(101, request, 1, 0, 0)
    out[name] = err
    if rc == 0:
        if request == PTRACE_ATTACH:
            os.waitpid(1, 0x40000000)  # __WALL: the stop the attach caused
        sc(101, PTRACE_DETACH, 1, 0, 0)
for name in ("environ", "mem"):
    try:
        with open(f"/proc/1/{name}", "rb") as f:
            f.read(1)
        out[name] = "read"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(out))
"""
)


@pytest.mark.attempt("ptrace PID 1 (the agent) to stop it or read its memory")
def test_ptrace_the_agent(http: httpx.Client, victim: str, blocked: Blocked) -> None:
    seen = py_json(http, victim, PTRACE_PID1)
    assert seen["attach"] == "EPERM" and seen["seize"] == "EPERM", seen
    assert seen["mem"] != "read", seen
    # gVisor's /proc shows a non-dumpable process's environ anyway (it is the sandbox's own)
    assert GVISOR or seen["environ"] != "read", seen
    # the agent still serves commands at once (a stopped one would make them wait)
    result = api.run(http, victim, "echo still-here", timeout=10)
    assert result["stdout"] == "still-here\n", result
    if http.get("/v1/health").json()["checkpoint"]:  # and it stays so across a checkpoint
        assert http.post(f"/v1/sandbox/{victim}/pause").status_code == 201
        restored = py_json(http, victim, PTRACE_PID1)  # a request resumes it (CRIU restore)
        assert restored["attach"] == "EPERM" and restored["seize"] == "EPERM", restored
    blocked(f"the agent is not dumpable: ptrace {seen['attach']}, /proc/1/mem {seen['mem']}")
