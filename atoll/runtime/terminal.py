"""Interactive terminals inside a sandbox: ``<runtime> exec --detach --tty --console-socket``.

The runtime allocates the pseudo-terminal inside the sandbox (its own devpts instance, so
``tty`` and ``stty`` there see a real ``/dev/pts/N``), hands the master side to us over a unix
socket (SCM_RIGHTS) and exits (runc accepts a console socket only when detaching). The shell
then belongs to us: the server is a child subreaper (``reaping``), so the orphaned shell is
re-parented to it, and we watch it through a pidfd and reap it. Nothing from the host is passed
into the sandbox; only the master fd comes out. Resizing is ``TIOCSWINSZ`` on the master (the
kernel then sends SIGWINCH to the terminal's foreground process group).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from atoll._exceptions import TerminalStartFailed
from atoll.runtime import oci_config, procfs, reaping
from atoll.runtime.commands import run

START_TIMEOUT_S = 15.0
KILL_WAIT_S = 5.0
READ_SIZE = 65536
# The runtime creates the terminal at 0x0 and we size it right after; a shell already running by
# then would get a SIGWINCH mid-start-up (and readline can drop what was typed meanwhile). So the
# shell starts only once the terminal has its size (or after 5 s at worst). First it takes the
# OOM score the sandbox's other processes have (crun's exec leaves the server's; raising it needs
# no privilege).
TAKE_OOM_SCORE = "echo {oom} > /proc/self/oom_score_adj 2>/dev/null; "
SIZE_WAIT = (
    'i=0; while [ "$({bb} stty size 2>/dev/null)" = "0 0" ] && [ $i -lt 500 ]; do '
    '{bb} usleep 10000; i=$((i+1)); done; exec "$@"'
)
_reapers: set[asyncio.Task[None]] = set()


class ExecCommand(Protocol):
    """A runtime's whole ``exec`` argv for a detached terminal running ``command`` with ``env``.
    A runtime that takes the process as a file (runc and crun: ``oci_config.command_process``)
    writes it to ``process_file``, one whose processes have pids of their own inside (runsc)
    writes the shell's to ``internal_pid_file``; ``open_terminal`` removes both afterwards."""

    def __call__(
        self,
        *,
        sandbox_id: str,
        console_socket: Path,
        pid_file: Path,
        internal_pid_file: Path,
        log_file: Path,
        process_file: Path,
        cwd: str,
        env: Mapping[str, str],
        command: Sequence[str],
    ) -> list[str]: ...


# Kills, inside the sandbox, every process of the session its argument (the shell's pid there)
# leads: for a runtime whose sandbox processes the host cannot signal (gVisor's run in its sentry).
KillInside = Callable[[int], Awaitable[object]]


def env_options(env: Mapping[str, str]) -> list[str]:
    """``--env KEY=VALUE`` for each variable (runc, crun and runsc spell it alike)."""
    return [option for key, value in env.items() for option in ("--env", f"{key}={value}")]


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _receive_fd(conn: socket.socket) -> int:
    fds = array.array("i")
    _, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        raise TerminalStartFailed("the runtime sent no terminal")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


def _wake(ready: asyncio.Future[None] | None) -> None:
    if ready is not None and not ready.done():
        ready.set_result(None)


async def _ready(fd: int, add: Callable[..., None], remove: Callable[[int], object]) -> None:
    """Wait until the event loop reports ``fd`` ready (``add`` is its add_reader/add_writer)."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


class Terminal:
    """A started terminal: the master fd and the shell (the leader of its own session). Under
    gVisor ``pid`` is the host's `runsc exec` that waits for the shell, and ``inside_pid`` the
    shell's pid in the sandbox, whose session ``kill_inside`` ends."""

    def __init__(
        self, master: int, pid: int, *, inside_pid: int | None = None, kill_inside: KillInside | None = None
    ) -> None:
        self.master = master
        self.pid = pid
        self.inside_pid = inside_pid
        self._kill_inside = kill_inside if inside_pid is not None else None
        self._pidfd = os.pidfd_open(pid)  # from here on the pid cannot be confused with another
        self._exit_code: int | None = None
        self._waiting = asyncio.Lock()  # one waiter on the pidfd at a time (one reader per fd)
        self._hung_up = False
        self._readable: asyncio.Future[None] | None = None  # what a waiting read() waits on
        os.set_blocking(master, False)

    def resize(self, cols: int, rows: int) -> None:
        set_size(self.master, cols, rows)

    async def read(self) -> bytes:
        """The next output; b"" once every process holding the terminal has closed it, or once
        the terminal was hung up (``hang_up``)."""
        loop = asyncio.get_running_loop()
        while not self._hung_up:
            try:
                return os.read(self.master, READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:  # no slave left: the terminal is over
                    return b""
                raise
            self._readable = loop.create_future()
            loop.add_reader(self.master, _wake, self._readable)
            try:
                await self._readable
            finally:
                loop.remove_reader(self.master)
                self._readable = None
        return b""

    def hang_up(self) -> None:
        """End the output: a waiting ``read`` returns b"" now, and so does every later one. The
        master stays open until ``close`` (after the reader has let go of it), which hangs up
        whatever still holds the terminal (the kernel, or gVisor's sentry, sends it SIGHUP)."""
        self._hung_up = True
        _wake(self._readable)

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
                continue
            except BlockingIOError:
                pass
            await _ready(self.master, loop.add_writer, loop.remove_writer)

    async def wait(self) -> int:
        """The shell's exit status, once it has exited (reaped here: it is our child)."""
        async with self._waiting:
            if self._exit_code is None:
                loop = asyncio.get_running_loop()
                await _ready(self._pidfd, loop.add_reader, loop.remove_reader)
                self._exit_code = _reap(self.pid)
                os.close(self._pidfd)
                self._pidfd = -1
        return self._exit_code if self._exit_code is not None else -1

    async def kill(self) -> int:
        """End the shell and everything started in its session; returns the exit status."""
        if self._exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            _kill_session(self.pid)
        if self._kill_inside is not None and self.inside_pid is not None:
            # under gVisor the signals above reach `runsc exec`, not the session in the sentry
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kill_inside(self.inside_pid), KILL_WAIT_S)
        # and whatever of it is left (the inside kill failed, or there is none) keeps the
        # terminal open, so its output would never end: hung up, the reader lets go
        self.hang_up()
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.wait(), KILL_WAIT_S)
        return -1

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def _reap(pid: int) -> int:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1  # not ours (no subreaper): its parent reaps it
    return os.waitstatus_to_exitcode(status) if done == pid else -1


def _kill_session(session: int) -> None:
    """SIGKILL every process in ``session`` (the shell leads it: the runtime made it so)."""
    for stat in procfs.processes():
        if stat.session == session:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stat.pid, signal.SIGKILL)


async def open_terminal(
    runtime_argv: Sequence[str],
    sandbox_id: str,
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    cols: int,
    rows: int,
    socket_dir: Path,
    exec_command: ExecCommand | None = None,
    oom_score_adj: int | None = oci_config.OOM_SCORE_ADJ,
    kill_inside: KillInside | None = None,
) -> Terminal:
    """Start ``argv`` on a new terminal in the sandbox. ``runtime_argv`` is the runtime binary
    with its global options (``crun --root …``); a runtime whose ``exec`` takes other options
    (runsc) gives ``exec_command`` instead. ``oom_score_adj`` is what the sandbox's commands
    have (None: leave what the runtime gives, as gVisor's sentry gives commands); ``kill_inside``
    is the runtime's kill of a session inside the sandbox (``Terminal.kill``)."""
    token = os.urandom(6).hex()
    base = socket_dir / f"{sandbox_id}-{token}.pty"  # with_suffix replaces ".pty": the token stays
    sock_path, pid_file, internal_pid_file, log_file, process_file = (
        base.with_suffix(s) for s in (".sock", ".pid", ".ipid", ".log", ".process.json")
    )
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    master = -1
    try:
        server.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        server.listen(1)
        server.setblocking(False)
        busybox = oci_config.BUSYBOX_PATH
        wait = SIZE_WAIT.format(bb=busybox)
        if oom_score_adj is not None:
            wait = TAKE_OOM_SCORE.format(oom=oom_score_adj) + wait
        shell = [busybox, "sh", "-c", wait, "atoll-pty", *argv]
        if exec_command is not None:
            command = exec_command(
                sandbox_id=sandbox_id, console_socket=sock_path, pid_file=pid_file,
                internal_pid_file=internal_pid_file, log_file=log_file, process_file=process_file,
                cwd=cwd, env=env, command=shell,
            )  # fmt: skip
        else:
            command = [*runtime_argv, "--log", str(log_file), "exec", "--detach", "--tty"]
            command += ["--console-socket", str(sock_path), "--pid-file", str(pid_file)]
            command += ["--no-new-privs", "--cwd", cwd, *env_options(env), sandbox_id, *shell]
        # the runtime connects and sends the terminal before it exits: the connection waits in
        # the listen backlog, so its exit comes first and tells whether it all worked
        rc, _, err = await run(command, timeout=START_TIMEOUT_S, check=False, error_log=log_file)
        if rc != 0 or not pid_file.exists():
            message = err.decode(errors="replace").strip()
            raise TerminalStartFailed(message or f"the runtime exited {rc}")
        pid = int(pid_file.read_text().strip())
        inside_pid = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            inside_pid = int(internal_pid_file.read_text().strip())
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(server), START_TIMEOUT_S)
        with conn:
            conn.settimeout(5)
            master = await asyncio.to_thread(_receive_fd, conn)
        set_size(master, cols, rows)
        return Terminal(master, pid, inside_pid=inside_pid, kill_inside=kill_inside)
    except BaseException:
        if master >= 0:
            os.close(master)
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            _kill_session(pid)
            task = asyncio.get_running_loop().create_task(reaping.reap_when_exits(pid))
            _reapers.add(task)
            task.add_done_callback(_reapers.discard)
        raise
    finally:
        server.close()
        for path in (sock_path, pid_file, internal_pid_file, log_file, process_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
