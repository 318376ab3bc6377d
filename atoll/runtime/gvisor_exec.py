"""Running commands in a gVisor sandbox: through Atoll's agent (``agent.c``), reached through
runsc's port forwarding.

gVisor restores only processes that descend from the container's init: everything started by
``runsc exec`` (and everything those processes fork) is killed on restore, because its caller is
gone. So commands are not exec'd directly: the sandbox's PID 1 is the same agent as in OCI
sandboxes (reaping init, supervisor of the template's main process, and command runner), and a
server a command leaves in the background is an ordinary descendant of init: restorable, and
under init's seccomp filter and process limit.

The host cannot connect to a socket file inside gVisor's user-space kernel, so there the agent
listens on the sandbox's own loopback (``127.0.0.1:AGENT_PORT``), which nothing outside the
sandbox can reach: not the router, not a neighbour. Per command Atoll makes one call on the
sandbox's control socket (``urpc``, below: the wire ``runsc port-forward`` speaks, without
starting the runsc binary), ``containerManager.PortForward``, passing one end of a socketpair;
the sentry connects it to the agent's port, and the rest is the agent's protocol (``agent.py``).
Starting a command this way costs the agent two forks and an exec, and no process on the host.

The watchdog: code inside can stop PID 1 (gVisor's sentry, unlike Linux, delivers SIGSTOP to
a pid namespace's init from inside it), and a stopped agent would stall every command of the
sandbox for ``agent.START_TIMEOUT_S``. The host sees no agent process to look at, so an exec
without its result after ``WAKE_AGENT_AFTER_S`` (and after twice as long each time, up to
``WAKE_AGENT_MAX_S``: a stop during a long command) sends PID 1 SIGCONT through the control
socket (``containerManager.Signal``, what ``runsc kill <id> CONT`` does). For a running agent
that is a no-op, except that the agent passes SIGCONT on to the template's main process.

A timeout kill is the agent's own (a request on the open connection), so it needs no new process,
which a fork bomb would not leave room for; a fork the agent cannot make is reported, and becomes
"try again later".

Failures are typed (``atoll._exceptions``): a control socket that cannot be reached is
``SandboxNotRunning`` (the sentry is gone), a port forward the sentry refuses is
``AgentUnavailable``, the agent's own answers are typed by ``agent_errors``.
"""

from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atoll._exceptions import (
    AgentUnavailable,
    ExecSetupFailed,
    ProcessLimitReached,
    SandboxFailure,
    SandboxNotRunning,
)
from atoll.runtime import agent
from atoll.runtime.spec import ExecRequest, ExecResult

log = logging.getLogger("atoll.gvisor")

# the agent's port on the sandbox's loopback (which a sandbox's own servers cannot use)
AGENT_PORT = 49983
# the agent's output comes in acknowledged chunks of this size (agent.c's `pace`): runsc's port
# forwarding panics, ending the sandbox, when more than 16 KiB waits to be read from the sandbox
OUTPUT_PACE = 8192
AGENT_READY_S = 10.0  # how long a booted or restored sandbox's agent gets to start listening
# a command without its result after this long: PID 1 may be stopped (gVisor delivers SIGSTOP to
# it from inside), so it is sent SIGCONT (the watchdog, ``Executor.exec``)
WAKE_AGENT_AFTER_S = 1.0
WAKE_AGENT_MAX_S = 8.0  # and again after twice as long each time, up to this
SIGCONT = 18


def agent_args(main_command: Sequence[str] | None) -> list[str]:
    """The sandbox's PID 1: the agent, listening on the sandbox's loopback."""
    return agent.init_args(main_command, tcp_port=AGENT_PORT)


class ControlError(SandboxFailure):
    """The sandbox's control server refused a call (its message is gVisor's own)."""


async def call(socket_path: Path, method: str, arg: Any, fds: Sequence[int] = ()) -> Any:
    """One urpc call on a sandbox's control socket: a JSON request (with ``fds`` passed as
    SCM_RIGHTS), a JSON reply. This is the wire format ``runsc`` itself speaks to the sandbox
    (``gvisor.dev/gvisor/pkg/urpc``) for the runsc release ``scripts/setup-gvisor.sh`` installs."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(socket_path))
        data = json.dumps({"method": method, "arg": arg}).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = sock.sendmsg([data], ancillary)
        if sent < len(data):
            await loop.sock_sendall(sock, data[sent:])
        reply = b""
        while True:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ControlError(f"{method}: the sandbox closed its control socket")
            reply += chunk
            try:
                result = json.loads(reply)
            except ValueError:
                continue
            break
    if not result.get("success"):
        raise ControlError(str(result.get("err") or f"{method} failed"))
    return result.get("result")


class Executor:
    """Runs commands in one runsc root's sandboxes (``control_socket(id)`` names the socket)."""

    def __init__(self, state_root: Path) -> None:
        self.state_root = state_root
        self.in_flight: dict[str, int] = {}  # sandbox id -> running commands (no checkpoint then)

    def control_socket(self, sandbox_id: str) -> Path:
        return self.state_root / f"runsc-{sandbox_id}.sock"

    def busy(self, sandbox_id: str) -> bool:
        """Commands are running: their callers hold connections, which a checkpoint cannot carry."""
        return bool(self.in_flight.get(sandbox_id))

    async def connect_agent(self, sandbox_id: str) -> socket.socket:
        """A stream to the sandbox's agent: ``SandboxNotRunning`` when its control socket does not
        answer (the sentry is gone), ``AgentUnavailable`` when nothing listens on the agent's port."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            args = {"ContainerID": sandbox_id, "Port": AGENT_PORT}
            method = "containerManager.PortForward"
            await call(self.control_socket(sandbox_id), method, args, [theirs.fileno()])
        except ControlError as exc:
            ours.close()
            raise AgentUnavailable(f"the sandbox's agent does not answer: {exc}") from None
        except OSError as exc:
            ours.close()
            raise SandboxNotRunning(f"the sandbox is not running ({exc.strerror})", errno=exc.errno) from None
        finally:
            theirs.close()
        return ours

    async def wait_for_agent(self, sandbox_id: str, timeout: float = AGENT_READY_S) -> None:
        """Wait until the agent of a sandbox that has just started listens."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                probe = await self.connect_agent(sandbox_id)
            except ExecSetupFailed:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.005)
                continue
            probe.close()  # the agent's handler reads EOF and exits without running anything
            return

    async def wake_agent(self, sandbox_id: str) -> None:
        """SIGCONT to the sandbox's PID 1 (the watchdog, see the module docstring)."""
        args = {"CID": sandbox_id, "Signo": SIGCONT, "PID": 0, "Mode": 0}  # 0: that process only
        try:
            await call(self.control_socket(sandbox_id), "containerManager.Signal", args)
        except (ControlError, OSError) as exc:
            log.info("sandbox %s: continuing its agent failed: %s", sandbox_id, exc)

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        self.in_flight[sandbox_id] = self.in_flight.get(sandbox_id, 0) + 1
        try:
            sock = await self.connect_agent(sandbox_id)
            conversation = asyncio.ensure_future(
                agent.converse(sock, request, f"sandbox {sandbox_id}", pace=OUTPUT_PACE)
            )
            try:
                wait_s = WAKE_AGENT_AFTER_S
                while not (await asyncio.wait({conversation}, timeout=wait_s))[0]:
                    await self.wake_agent(sandbox_id)
                    wait_s = min(2 * wait_s, WAKE_AGENT_MAX_S)
                result = conversation.result()
            finally:
                conversation.cancel()  # this call was cancelled: so is the command (a no-op when done)
        finally:
            self.in_flight[sandbox_id] -= 1
            if not self.in_flight[sandbox_id]:
                del self.in_flight[sandbox_id]
        if result is None:  # it closed the connection unanswered: its handler could not start
            raise ProcessLimitReached("the sandbox's agent could not take the command", errno=errno.EAGAIN)
        return result
