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
quoted for the shell), wakes the agent, waits for the command's status, reports it on its
stdin (a socket only Atoll and the client hold), removes the spool and copies the spooled output
to Atoll's stdout and stderr pipes. On a timeout Atoll asks the client (on that socket) to kill
the command's whole session, which it does with shell builtins only, so it works even when a
fork bomb has used up the sandbox's process limit; a client that does not answer is killed
through the control socket, which needs no process either.
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
KILL_WAIT_S = 20.0  # after a timeout, how long the client gets to kill the command's session
KILL_GRACE_S = 2.0  # then how long it gets to hand over the output the command wrote
# a helper that cannot start (the sandbox's process limit is used up, e.g. by a fork bomb whose
# members keep exiting and forking) is tried again this many times, this long apart
HELPER_ATTEMPTS = 50
HELPER_RETRY_S = 0.05
HELPER_WAIT_S = 30.0  # how long a clean-up helper is waited for (never forever: a pause stops it)

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

# ``atoll-exec ARGV...`` with the request's environment and working directory. fd 0 is the
# status socket, fd 1 and fd 3 are Atoll's stdout and stderr pipes, fd 2 is /dev/null (so the
# client's own complaints never reach the command's output). It writes the request (the
# environment first, before its own variables can change it; then the working directory and
# argv, quoted for the shell), wakes the agent and sleeps until the status file appears
# (SIGUSR1 cuts the sleep short). Then it removes the spool (the output files stay open on fds
# 5 and 6), reports the status on fd 0, copies stderr (a fork, only when there is some) and
# becomes ``cat`` of stdout (only when there is some). The id is its pid (what ExecuteAsync
# returned to Atoll).
#
# A line "kill" from Atoll on fd 0 (a timeout) makes it SIGKILL the command's session itself,
# with shell builtins only (``z``): it needs no new process, which a fork bomb would not leave
# room for. The command's process group (which a bomb's members keep unless they leave it) is
# stopped first, a whole group per call, until no member is left running, and then killed; a
# scan of the session gets the rest. It repeats on every wake-up until the command is gone.
CLIENT = r"""
export -p >/.atoll/run/$$.req
R=/.atoll/run; id=$$; q="'"; s=; k=; t=
z() {
  local IFS=' ' p= i=0 f line found
  { read -r p <$R/$id.pid; } 2>/dev/null || return
  while [ $i -lt 100 ] && kill -STOP -$p 2>/dev/null; do i=$((i + 1)); done
  kill -9 -$p 2>/dev/null
  i=0
  while [ $i -lt 50 ]; do
    i=$((i + 1)); found=
    for f in /proc/[0-9]*/stat; do
      { read -r line <"$f"; } 2>/dev/null || continue
      set -- ${line##*) }
      [ "$4" = "$p" ] && [ "$1" != Z ] || continue
      f=${f#/proc/}; kill -9 ${f%/stat} 2>/dev/null && found=1
    done
    [ -n "$found" ] || break
  done
}
w() {
  read -t $1 x <&0 && [ "$x" = kill ] && k=1
  [ -z "$k" ] || z
}
while [ ! -p $R/agent.fifo ]; do read -t 0.01 x <&0; done
: >$R/$id.st
{
  printf "cd -- '%s' || { echo chdir >$R/$id.st; kill -USR1 $id; exit; }\n" "${PWD//$q/$q\\$q$q}"
  printf 'set --'; for a; do printf " '%s'" "${a//$q/$q\\$q$q}"; done; echo
} >>$R/$id.req
trap : USR1
echo $id 1<>$R/agent.fifo
for t in 0.002 0.005 0.01 0.02 0.05 0.1 0.2 0.5; do
  { read -r s <$R/$id.st; } 2>/dev/null && break
  w $t
done
until { read -r s <$R/$id.st; } 2>/dev/null; do [ -n "$k" ] && w 0.1 || w 1; done
o=; e=
[ -s $R/$id.out ] && o=1
[ -s $R/$id.err ] && e=1
exec 5<>$R/$id.out 6<>$R/$id.err
rm -f $R/$id.req $R/$id.pid $R/$id.st $R/$id.out $R/$id.err
echo "$s" >&0
[ -n "$e" ] && cat <&6 >&3
exec 3>&- 6<&-
[ -n "$o" ] && exec cat <&5
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
    sandbox_id: str, argv: Sequence[str], env: dict[str, str], cwd: str, caps: int, nfds: int = 3
) -> dict[str, Any]:
    """ExecuteAsync's argument: the passed files become fds 0 .. ``nfds - 1`` of the process."""
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
        "GuestFDs": list(range(nfds)),
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
        args = execute_args(sandbox_id, argv, env, cwd, self.capabilities, len(fds))
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

    async def _run_helper(self, sandbox_id: str, argv: Sequence[str]) -> None:
        """Run a busybox helper in the sandbox to completion (stdio on /dev/null)."""
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for _ in range(HELPER_ATTEMPTS):
                try:
                    pid = await self._spawn(sandbox_id, argv, {}, "/", [null, null, null])
                    break
                except ExecSetupFailed as exc:
                    if "try again" not in str(exc):
                        raise
                    await asyncio.sleep(HELPER_RETRY_S)
            else:
                return
            wait = call(
                self.control_socket(sandbox_id), "containerManager.WaitPID", {"PID": pid, "CID": sandbox_id}
            )
            await asyncio.wait_for(wait, HELPER_WAIT_S)
        except TimeoutError:  # e.g. the sandbox was paused meanwhile: the helper can wait
            pass
        except (ExecSetupFailed, ControlError, OSError):
            pass  # the sandbox is gone, and so is what the helper was for
        finally:
            os.close(null)

    async def capture(
        self, sandbox_id: str, argv: Sequence[str], *, timeout: float = 10.0, cap: int = 1 << 20
    ) -> bytes:
        """Run a helper in the sandbox to completion and return its stdout (ExecSetupFailed if
        it cannot start or does not end within ``timeout``)."""
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            pid = await self._spawn(sandbox_id, argv, {}, "/", [null, out_w, null])
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
            os.close(null)
        out = bytearray()
        reader = asyncio.create_task(_read_capped(loop, out_r, out, cap))
        try:
            wait = call(
                self.control_socket(sandbox_id), "containerManager.WaitPID", {"PID": pid, "CID": sandbox_id}
            )
            try:
                await asyncio.wait_for(wait, timeout)
            except TimeoutError:  # e.g. the sandbox is paused
                await self.signal(sandbox_id, pid)
                raise ExecSetupFailed(f"{argv[-1]}: no answer in {timeout:g}s") from None
            except ControlError as exc:
                raise ExecSetupFailed(str(exc)) from None
            await asyncio.wait([reader], timeout=KILL_GRACE_S)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return bytes(out)

    async def signal(self, sandbox_id: str, pid: int, signo: int = 9) -> None:
        """Signal one process in the sandbox through the control socket (no process is started)."""
        args = {"CID": sandbox_id, "Signo": signo, "PID": pid, "Mode": 0}  # 0: that process only
        with contextlib.suppress(ControlError, OSError):
            await call(self.control_socket(sandbox_id), "containerManager.Signal", args)

    def _clean_up(self, sandbox_id: str, request_id: int) -> None:
        """Remove the spool of a request whose client did not get to do it (it was killed)."""
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
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            argv = [oci_config.BUSYBOX_PATH, "sh", "-c", CLIENT, "atoll-exec", *request.argv]
            fds = [theirs.fileno(), out_w, null, err_w]
            client = await self._spawn(sandbox_id, argv, request.env, request.cwd, fds)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)
            os.close(null)
        out, err = bytearray(), bytearray()
        readers = [
            asyncio.create_task(_read_capped(loop, out_r, out, request.max_output_bytes)),
            asyncio.create_task(_read_capped(loop, err_r, err, request.max_output_bytes)),
        ]
        status_reader, status_writer = await asyncio.open_connection(sock=ours)
        timed_out = False
        status = b""
        try:
            try:
                status = await asyncio.wait_for(status_reader.readline(), request.timeout)
            except TimeoutError:
                timed_out = True
                status_writer.write(b"kill\n")  # the client kills the command's session
                try:  # and still hands over what the command wrote before it died
                    status = await asyncio.wait_for(status_reader.readline(), KILL_WAIT_S)
                except TimeoutError:
                    await self.signal(sandbox_id, client)
            # the client turned into `cat` of the stdout spool: the pipes end when it does
            await asyncio.wait(readers, timeout=KILL_GRACE_S)
        finally:
            if not status:
                # cancelled (or the client is stuck): end the command and the client
                with contextlib.suppress(Exception):
                    status_writer.write(b"kill\n")
            status_writer.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if not status:
                self._clean_up(sandbox_id, client)
        if timed_out:
            err += f"\nprocess timed out after {request.timeout:g}s and was killed\n".encode()
            return ExecResult(exit_code=124, stdout=bytes(out), stderr=bytes(err), timed_out=True)
        code = _parse_status(status)
        if code is None:
            raise ExecSetupFailed(f"chdir to {request.cwd}: no such directory")
        return ExecResult(exit_code=code, stdout=bytes(out), stderr=bytes(err))


def _parse_status(line: bytes) -> int | None:
    """The client's status line: the exit code, or None for a missing working directory. No
    line: the client was killed (137)."""
    fields = line.split()
    if not fields:
        return 137
    if fields[0] == b"chdir":
        return None
    try:
        return int(fields[0])
    except ValueError:
        return 137


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
