"""Running one command in an OCI sandbox through the runtime's ``exec``, and collecting its
result: the fallback for when the sandbox's agent cannot take the command (``agent.py``: no
socket, or its fork failed), and the same contract as the agent's.

The runtime's ``exec --detach`` returns once the process has started (a foreground ``runc exec``
copies output through its own pipes and waits until every holder of them is gone). The command
runs under a tiny busybox shell wrapper that

- starts it as the leader of a new session, so that a timeout can kill everything it started
  (setsid(1) forks when its caller leads a process group, and busybox's setsid cannot wait;
  a background job of a non-interactive shell never leads a group, so there it needs no fork);
- points its stdout and stderr at files on a tmpfs inside the sandbox (``/.atoll/run``), and
  copies them to Atoll once the command has exited. So a server the command leaves running in
  the background holds no descriptor that leads out of the sandbox: the call returns when the
  command ends, and the sandbox stays checkpointable. Output is therefore delivered at the end,
  not streamed;
- reports the exit status on its stdin, a socket only Atoll and the wrapper hold (a background
  job's stdin is /dev/null by POSIX rule, so the command never sees the socket).

The runtime says why an ``exec`` failed only in prose, so a failure is typed by looking: a fork
the sandbox's pids limit refused meanwhile is ``ProcessLimitReached`` (the runtime's own process
could not start its threads); then ``_failure``: no PID 1 is ``SandboxNotRunning``; a working
directory that does not open as a directory inside the sandbox's root is ``BadWorkingDirectory``
with the errno of that open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from atoll._exceptions import BadWorkingDirectory, ExecSetupFailed, ProcessLimitReached, SandboxNotRunning
from atoll.runtime import confined, oci_config, procfs, reaping
from atoll.runtime.spec import ExecRequest, ExecResult
from atoll.runtime.terminal import TAKE_OOM_SCORE

RUN_DIR = f"{oci_config.HELPER_DIR}/run"
WRAPPER = (
    'o={run}/$$.out; e={run}/$$.err; {busybox} setsid "$@" >"$o" 2>"$e" & wait $!; s=$?; '
    'cat "$o"; cat "$e" >&2; rm -f "$o" "$e"; echo "$s" >&0'
)
KILL_GRACE_S = 2.0  # after a timeout kill, how long the wrapper gets to hand over partial output


def wrapped(argv: tuple[str, ...]) -> list[str]:
    """The wrapper's argv, running ``argv``; it first takes the OOM score of the sandbox's other
    processes (crun's exec leaves the server's, whatever the process file says)."""
    busybox = oci_config.BUSYBOX_PATH
    oom = TAKE_OOM_SCORE.format(oom=oci_config.OOM_SCORE_ADJ)
    script = oom + WRAPPER.format(busybox=busybox, run=RUN_DIR)
    return [busybox, "sh", "-c", script, "atoll-exec", *argv]


async def run_exec(
    runtime_argv: list[str],
    pid_file: Path,
    request: ExecRequest,
    *,
    init_pid: int | None = None,
    forks_refused: Callable[[], bool] = lambda: False,
) -> ExecResult:
    """``runtime_argv`` is the runtime's ``exec --detach --pid-file PID_FILE ... ID`` of
    ``wrapped(request.argv)`` (the command in a process file, ``OCIBackend.exec``). To tell why
    an exec failed: ``init_pid``, the host pid of the sandbox's PID 1 (None: not found), and
    ``forks_refused``, whether the sandbox's pids limit refused a fork meanwhile."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            *runtime_argv,
            stdin=theirs.fileno(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        theirs.close()
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    readers = [
        asyncio.create_task(_read_capped(proc.stdout, out, request.max_output_bytes)),
        asyncio.create_task(_read_capped(proc.stderr, err, request.max_output_bytes)),
    ]
    status_reader, status_writer = await asyncio.open_connection(sock=ours)
    timed_out = False
    status = b""
    try:
        runtime_rc = await asyncio.wait_for(proc.wait(), 30)
        if runtime_rc != 0 or not pid_file.exists():
            await asyncio.wait(readers, timeout=1)
            message = err.decode(errors="replace").strip() or f"exec failed with {runtime_rc}"
            if forks_refused():  # the runtime could not even start its own threads in there
                raise ProcessLimitReached(message[-500:], errno=errno.EAGAIN)
            raise _failure(message[-500:], init_pid, request.cwd)
        try:
            status = await asyncio.wait_for(status_reader.readline(), request.timeout)
        except TimeoutError:
            timed_out = True
            kill_command(pid_file)
            try:  # the wrapper still hands over what the command wrote before it died
                await asyncio.wait_for(status_reader.readline(), KILL_GRACE_S)
            except TimeoutError:
                kill_command(pid_file, wrapper_too=True)
        # only the wrapper holds our pipes: they end when it does
        await asyncio.wait(readers, timeout=KILL_GRACE_S)
    finally:
        status_writer.close()
        _reap_wrapper(pid_file)
        for task in readers:
            task.cancel()
        _close_pipes(proc)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    if timed_out:
        err += f"\nprocess timed out after {request.timeout:g}s and was killed\n".encode()
        return ExecResult(exit_code=124, stdout=bytes(out), stderr=bytes(err), timed_out=True)
    try:
        code = int(status.strip())
    except ValueError:
        code = 137  # the wrapper itself was killed (e.g. the sandbox's OOM killer or its deletion)
    return ExecResult(exit_code=code, stdout=bytes(out), stderr=bytes(err))


_background: set[asyncio.Task[None]] = set()


def _failure(message: str, init_pid: int | None, cwd: str) -> ExecSetupFailed:
    """Why the runtime could not start the command, found by looking rather than by its text."""
    if init_pid is None:
        return SandboxNotRunning(message)
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return SandboxNotRunning(message, errno=exc.errno)
    try:
        resolve = confined.RESOLVE_IN_ROOT | confined.RESOLVE_NO_MAGICLINKS
        flags = os.O_PATH | os.O_DIRECTORY
        found = confined.open_beneath(root, cwd.lstrip("/") or ".", flags, resolve=resolve)
        os.close(found)
    except OSError as exc:
        return BadWorkingDirectory(message, errno=exc.errno)
    finally:
        os.close(root)
    return ExecSetupFailed(message)


def _reap_wrapper(pid_file: Path) -> None:
    """The wrapper outlives the detached runtime process and so becomes our child: reap it."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    task = asyncio.create_task(reaping.reap_when_exits(pid))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _read_capped(stream: asyncio.StreamReader, into: bytearray, cap: int) -> None:
    while chunk := await stream.read(65536):
        room = cap - len(into)
        if room > 0:
            into += chunk[:room]


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    transport = getattr(proc, "_transport", None)
    if transport is None:
        return
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd)
        if pipe is not None:
            pipe.close()


def kill_command(pid_file: Path, *, wrapper_too: bool = False, rounds: int = 50) -> None:
    """SIGKILL every process in the session the command started (and the wrapper if asked).

    Repeated until a scan finds nothing: a fork bomb keeps forking while it is being killed."""
    try:
        wrapper = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    sessions: set[int] = set()
    for _ in range(rounds):
        processes = _process_table()
        sessions |= {pid for pid, (ppid, _) in processes.items() if ppid == wrapper}
        victims = [
            pid
            for pid, (_, session) in processes.items()
            if session in sessions or (wrapper_too and pid == wrapper)
        ]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session) for every process on the host."""
    return {stat.pid: (stat.ppid, stat.session) for stat in procfs.processes()}
