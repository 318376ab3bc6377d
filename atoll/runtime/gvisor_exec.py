"""Running one command in a gVisor sandbox, so that what it leaves behind survives a checkpoint.

gVisor restores only processes that descend from the container's init: everything started by
``runsc exec`` (and everything those processes fork) is killed on restore, because its caller is
gone. So commands are not exec'd directly. The sandbox's init supervises a tiny busybox *agent*
(``AGENT``) that reads request ids from a FIFO on the sandbox's private tmpfs (``/.atoll/run``)
and forks each command as its own child, as the leader of a new session, with stdout and stderr
spooled to files on that tmpfs (as ``oci_exec``'s wrapper does). A server the command leaves in
the background is therefore an ordinary descendant of init: restorable, and under init's seccomp
filter and process limit.

Per command, Atoll starts a short-lived *client* in the sandbox through the sandbox's control
socket (``urpc``, below; the same call ``runsc exec`` makes, without the cost of starting the
runsc binary). The client writes the request (its environment, working directory and argv,
quoted for the shell), wakes the agent, waits for the command's status, copies the spooled
output to its own stdout and stderr (pipes to Atoll) and reports the status on its stdin, a
socket only Atoll and the client hold. A timeout kills the command's whole session with a
third script (``KILL``) that uses shell builtins only, so it works even when a fork bomb has
used up the sandbox's process limit.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atoll.runtime import oci_config
from atoll.runtime.spec import ExecRequest, ExecResult, ExecSetupFailed

RUN_DIR = f"{oci_config.HELPER_DIR}/run"
KILL_GRACE_S = 2.0  # after a timeout kill, how long the client gets to hand over partial output
# a helper that cannot start (the sandbox's process limit is used up, e.g. by a fork bomb whose
# members keep exiting and forking) is tried again this many times, this long apart
HELPER_ATTEMPTS = 50
HELPER_RETRY_S = 0.05

# PID 1's child (``init -- busybox sh -c AGENT AGENT [main command...]``: its own text is its
# $0). ``3<>`` opens the FIFO read-write, so it never reads EOF while no client is connected.
# Per request it forks once; the fork starts the command (a second fork, which `setsid` makes a
# session leader), waits for it, writes its status and wakes the client with SIGUSR1. A shell
# exits when it cannot fork (a fork bomb has used up the process limit), and PID 1 with it:
# the agent then replaces itself with a fresh copy instead, which keeps the FIFO.
AGENT = r"""
R=/.atoll/run
trap 'exec /.atoll/busybox sh -c "$0" "$0"' EXIT
[ $# -gt 0 ] && "$@" </dev/null &
[ -p $R/agent.fifo ] || { rm -f $R/agent.fifo; mkfifo -m 600 $R/agent.fifo; }
exec 3<>$R/agent.fifo
while read -r id <&3; do
  (
    exec 3<&-
    . $R/$id.req
    setsid "$@" </dev/null >$R/$id.out 2>$R/$id.err &
    echo $! >$R/$id.pid
    wait $!
    echo $? >$R/$id.st
    kill -USR1 $id
  ) &
done
"""

# ``atoll-exec ARGV...`` with the request's environment and working directory; fd 0 is the
# status socket (Atoll never writes to it: reading it is how the client sleeps). It forks
# nothing: it writes the request (its environment, directory and argv, quoted for the shell),
# wakes the agent, sleeps until the status file appears (SIGUSR1 cuts the sleep short), reports
# "STATUS STDERR_NONEMPTY" on fd 0 and becomes ``cat`` of the spooled stdout. The id is its pid
# (what ExecuteAsync returned to Atoll).
CLIENT = r"""
R=/.atoll/run; id=$$; q="'"; s=
while [ ! -p $R/agent.fifo ]; do read -t 0.01 x <&0; done
: >$R/$id.st
{
  export -p
  printf "cd -- '%s' || { echo chdir >$R/$id.st; kill -USR1 $id; exit; }\n" "${PWD//$q/$q\\$q$q}"
  printf 'set --'; for a; do printf " '%s'" "${a//$q/$q\\$q$q}"; done; echo
} >$R/$id.req
trap : USR1
echo $id 1<>$R/agent.fifo
for t in 0.002 0.005 0.01 0.02 0.05 0.1 0.2 0.5; do
  { read -r s <$R/$id.st; } 2>/dev/null && break
  read -t $t x <&0
done
until { read -r s <$R/$id.st; } 2>/dev/null; do read -t 1 x <&0; done
[ -s $R/$id.err ] && e=1 || e=0
echo "$s $e" >&0
[ "$s" = chdir ] || exec cat $R/$id.out
"""

# ``atoll-kill ID [all]``: SIGKILL every process in the command's session until none is left;
# with ``all``, the client too. A fork bomb keeps forking while it is being killed, so its
# process group (which its members keep unless they leave it) is stopped first, a whole group
# per call, until no member is left running, and then killed; the session's scan gets the rest.
KILL = r"""
R=/.atoll/run; id=$1; mode=$2; s=
read -r s <$R/$id.pid
i=0
while [ -n "$s" ] && [ $i -lt 100 ] && kill -STOP -$s 2>/dev/null; do i=$((i + 1)); done
[ -n "$s" ] && kill -9 -$s 2>/dev/null
i=0
while [ -n "$s" ] && [ $i -lt 50 ]; do
  i=$((i + 1)); found=
  for f in /proc/[0-9]*/stat; do
    read -r line <"$f" || continue
    set -- ${line##*) }
    [ "$4" = "$s" ] && [ "$1" != Z ] || continue
    p=${f#/proc/}; kill -9 ${p%/stat} && found=1
  done
  [ -n "$found" ] || break
done
[ "$mode" = all ] && kill -9 $id
exit 0
"""


def agent_args(main_command: Sequence[str] | None) -> list[str]:
    """The sandbox's PID 1: the reaping init, supervising the agent (and the template's main
    process, which the agent starts first)."""
    busybox = oci_config.BUSYBOX_PATH
    return [oci_config.INIT_PATH, "--", busybox, "sh", "-c", AGENT, AGENT, *(main_command or ())]


class ControlError(RuntimeError):
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


def execute_args(
    sandbox_id: str, argv: Sequence[str], env: dict[str, str], cwd: str, caps: int
) -> dict[str, Any]:
    capabilities = {"PermittedCaps": caps, "EffectiveCaps": caps, "BoundingCaps": caps}
    capabilities |= {"InheritableCaps": 0, "AmbientCaps": 0}
    return {
        "filename": "",
        "argv": list(argv),
        "envv": oci_config.env_list(env),
        "wd": cwd,
        "KUID": 0,
        "KGID": 0,
        "ExtraKGIDs": [],
        "Capabilities": capabilities,
        "StdioIsPty": False,
        "GuestFDs": [0, 1, 2],
        "ContainerID": sandbox_id,
    }


class Executor:
    """Runs commands in one runsc root's sandboxes (``control_socket(id)`` names the socket)."""

    def __init__(self, state_root: Path, capabilities: int) -> None:
        self.state_root = state_root
        self.capabilities = capabilities
        self.in_flight: dict[str, int] = {}  # sandbox id -> running commands (no checkpoint then)
        self._cleanups: dict[str, set[asyncio.Task[None]]] = {}

    def control_socket(self, sandbox_id: str) -> Path:
        return self.state_root / f"runsc-{sandbox_id}.sock"

    def busy(self, sandbox_id: str) -> bool:
        """Commands are running: their callers hold host pipes, which a checkpoint cannot carry."""
        return bool(self.in_flight.get(sandbox_id))

    async def settle(self, sandbox_id: str) -> None:
        """Wait for the spool clean-ups still running in the sandbox."""
        pending = self._cleanups.get(sandbox_id)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _spawn(
        self, sandbox_id: str, argv: Sequence[str], env: dict[str, str], cwd: str, fds: Sequence[int]
    ) -> int:
        args = execute_args(sandbox_id, argv, env, cwd, self.capabilities)
        try:
            pid = await call(self.control_socket(sandbox_id), "containerManager.ExecuteAsync", args, fds)
        except ControlError as exc:
            message = str(exc)
            if "working directory" in message:
                message = f"chdir to {cwd}: {message}"
            raise ExecSetupFailed(message) from None
        except OSError as exc:
            raise ExecSetupFailed(f"the sandbox is not running ({exc.strerror})") from None
        return int(pid)

    async def _run_helper(self, sandbox_id: str, argv: Sequence[str], stdout: int | None = None) -> None:
        """Run a busybox helper in the sandbox to completion (stdout to ``stdout`` if given)."""
        null = os.open(os.devnull, os.O_RDWR)
        try:
            fds = [null, null if stdout is None else stdout, null]
            for _ in range(HELPER_ATTEMPTS):
                try:
                    pid = await self._spawn(sandbox_id, argv, {}, "/", fds)
                    break
                except ExecSetupFailed as exc:
                    if "try again" not in str(exc):
                        raise
                    await asyncio.sleep(HELPER_RETRY_S)
            else:
                return
            if stdout is not None:
                os.close(stdout)
                stdout = None
            await call(
                self.control_socket(sandbox_id), "containerManager.WaitPID", {"PID": pid, "CID": sandbox_id}
            )
        except (ExecSetupFailed, ControlError, OSError):
            pass  # the sandbox is gone, and so is what the helper was for
        finally:
            os.close(null)
            if stdout is not None:
                os.close(stdout)

    async def kill(self, sandbox_id: str, client_pid: int, *, client_too: bool = False) -> None:
        argv = [oci_config.BUSYBOX_PATH, "sh", "-c", KILL, "atoll-kill", str(client_pid)]
        await self._run_helper(sandbox_id, [*argv, "all"] if client_too else argv)

    def _clean_up(self, sandbox_id: str, request_id: int) -> None:
        spool = [f"{RUN_DIR}/{request_id}.{kind}" for kind in ("req", "out", "err", "pid", "st")]
        task = asyncio.create_task(
            self._run_helper(sandbox_id, [oci_config.BUSYBOX_PATH, "rm", "-f", *spool])
        )
        pending = self._cleanups.setdefault(sandbox_id, set())
        pending.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            pending.discard(finished)
            if not pending:
                self._cleanups.pop(sandbox_id, None)

        task.add_done_callback(done)

    async def exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        self.in_flight[sandbox_id] = self.in_flight.get(sandbox_id, 0) + 1
        try:
            return await self._exec(sandbox_id, request)
        finally:
            self.in_flight[sandbox_id] -= 1
            if not self.in_flight[sandbox_id]:
                del self.in_flight[sandbox_id]

    async def _exec(self, sandbox_id: str, request: ExecRequest) -> ExecResult:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            argv = [oci_config.BUSYBOX_PATH, "sh", "-c", CLIENT, "atoll-exec", *request.argv]
            client = await self._spawn(
                sandbox_id, argv, request.env, request.cwd, [theirs.fileno(), out_w, null]
            )
        except BaseException:
            os.close(out_r)
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(null)
        out, err = bytearray(), bytearray()
        reader = asyncio.create_task(_read_capped(loop, out_r, out, request.max_output_bytes))
        status_reader, status_writer = await asyncio.open_connection(sock=ours)
        timed_out = False
        status = b""
        try:
            try:
                status = await asyncio.wait_for(status_reader.readline(), request.timeout)
            except TimeoutError:
                timed_out = True
                await self.kill(sandbox_id, client)
                try:  # the client still hands over what the command wrote before it died
                    status = await asyncio.wait_for(status_reader.readline(), KILL_GRACE_S)
                except TimeoutError:
                    await self.kill(sandbox_id, client, client_too=True)
            # the client turned into `cat` of the stdout spool: the pipe ends when it does
            await asyncio.wait([reader], timeout=KILL_GRACE_S)
            code, has_stderr = _parse_status(status)
            if has_stderr:
                err_r, err_w = os.pipe()
                err_reader = asyncio.create_task(_read_capped(loop, err_r, err, request.max_output_bytes))
                await self._run_helper(
                    sandbox_id, [oci_config.BUSYBOX_PATH, "cat", f"{RUN_DIR}/{client}.err"], err_w
                )
                await asyncio.wait([err_reader], timeout=KILL_GRACE_S)
                err_reader.cancel()
        finally:
            status_writer.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._clean_up(sandbox_id, client)
        if timed_out:
            err += f"\nprocess timed out after {request.timeout:g}s and was killed\n".encode()
            return ExecResult(exit_code=124, stdout=bytes(out), stderr=bytes(err), timed_out=True)
        if code is None:
            raise ExecSetupFailed(f"chdir to {request.cwd}: no such directory")
        return ExecResult(exit_code=code, stdout=bytes(out), stderr=bytes(err))


def _parse_status(line: bytes) -> tuple[int | None, bool]:
    """The client's "STATUS STDERR_NONEMPTY" line: (exit code, or None for a missing working
    directory; whether stderr has output). No line: the client was killed (137)."""
    fields = line.split()
    if not fields:
        return 137, False
    has_stderr = len(fields) > 1 and fields[1] == b"1"
    if fields[0] == b"chdir":
        return None, False
    try:
        return int(fields[0]), has_stderr
    except ValueError:
        return 137, has_stderr


async def _read_capped(loop: asyncio.AbstractEventLoop, fd: int, into: bytearray, cap: int) -> None:
    """Read a pipe to EOF without blocking the loop, keeping at most ``cap`` bytes."""
    os.set_blocking(fd, False)
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                ready.clear()
                await ready.wait()
                continue
            if not chunk:
                return
            room = cap - len(into)
            if room > 0:
                into += chunk[:room]
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
