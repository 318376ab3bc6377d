"""Interactive terminals inside a sandbox: ``<runtime> exec --tty --console-socket``.

The runtime allocates the pseudo-terminal inside the sandbox (its own devpts instance, so
``tty`` and ``stty`` there see a real ``/dev/pts/N``) and hands the master side to us over a
unix socket (SCM_RIGHTS). The runtime stays in the foreground as the shell's parent and exits
with it; its exit status is the shell's. Nothing from the host is ever passed into the sandbox:
only the master fd comes out. Resizing is ``TIOCSWINSZ`` on the master (the kernel then sends
SIGWINCH to the terminal's foreground process group).
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
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from atoll.runtime import reaping

START_TIMEOUT_S = 15.0
KILL_GRACE_S = 5.0
READ_SIZE = 65536


class TerminalStartFailed(RuntimeError):
    """The runtime could not start the terminal's process (no such cwd, sandbox gone)."""


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


class Terminal:
    """A started terminal: the master fd, and the runtime process that waits for the shell."""

    def __init__(self, master: int, proc: asyncio.subprocess.Process, pid_file: Path) -> None:
        self.master = master
        self.proc = proc
        self.pid_file = pid_file
        self._waiting = asyncio.Lock()
        self._exit_code: int | None = None
        os.set_blocking(master, False)

    def resize(self, cols: int, rows: int) -> None:
        set_size(self.master, cols, rows)

    async def read(self) -> bytes:
        """The next output; b"" once every process holding the terminal has closed it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.master, READ_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:  # no slave left: the terminal is over
                    return b""
                raise
            await _ready(self.master, loop.add_reader, loop.remove_reader)

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

    def _session_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    async def kill(self) -> int:
        """End the shell and everything started in its session; returns the exit status."""
        pid = self._session_pid()
        if pid is not None and self.proc.returncode is None:
            _kill_session(pid)
        with contextlib.suppress(TimeoutError):
            # the runtime reaps the shell and exits with it; killing the runtime first would
            # hand the shell to us (the server is a subreaper) as a zombie
            return await asyncio.wait_for(asyncio.shield(self.wait()), KILL_GRACE_S)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return await self.wait()

    async def wait(self) -> int:
        async with self._waiting:  # once: the pid must not be waited for after it may be reused
            if self._exit_code is None:
                code = await self.proc.wait()
                pid = self._session_pid()
                if pid is not None:
                    # should the runtime have gone before the shell, the shell became our child
                    await reaping.reap_when_exits(pid, timeout=KILL_GRACE_S)
                with contextlib.suppress(FileNotFoundError):
                    self.pid_file.unlink()
                self._exit_code = code
            return self._exit_code

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


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


def _kill_session(session: int) -> None:
    """SIGKILL every process in ``session`` (the shell is its leader: the runtime set it up)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == session:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


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
) -> Terminal:
    """Start ``argv`` on a new terminal in the sandbox. ``runtime_argv`` is the runtime binary
    with its global options (``crun --root …``)."""
    token = os.urandom(6).hex()
    sock_path = socket_dir / f"{sandbox_id}.pty.{token}.sock"
    pid_file = socket_dir / f"{sandbox_id}.pty.{token}.pid"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    proc: asyncio.subprocess.Process | None = None
    try:
        server.bind(str(sock_path))
        os.chmod(sock_path, 0o600)
        server.listen(1)
        server.setblocking(False)
        command = [*runtime_argv, "exec", "--tty", "--console-socket", str(sock_path)]
        command += ["--no-new-privs", "--pid-file", str(pid_file), "--cwd", cwd]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        command += [sandbox_id, *argv]
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(loop.sock_accept(server))
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait({accept, exited}, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED")
        if accept not in done:
            accept.cancel()
            exited.cancel()
            assert proc.stderr is not None
            if exited in done:
                message = (await proc.stderr.read()).decode(errors="replace").strip()
                raise TerminalStartFailed(message or f"the runtime exited {proc.returncode}")
            raise TerminalStartFailed("the runtime did not hand over a terminal in time")
        exited.cancel()
        conn, _ = accept.result()
        with conn:
            conn.settimeout(5)
            master = await asyncio.to_thread(_receive_fd, conn)
        set_size(master, cols, rows)
        return Terminal(master, proc, pid_file)
    except BaseException:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        raise
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
