"""Process plumbing of the supervisor: children started before it (``Adopted``, from
``early.start``), and the pipes through which a child says it is ready or is told to go on."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass

from .early import Early


class Adopted:
    """A child started by ``early.start`` (``os.posix_spawnp``, before asyncio was imported),
    with what the supervisor uses of an asyncio process: its exit is waited for by a thread, as
    asyncio's own child watcher does."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()

        def wait_for_exit() -> None:
            loop.call_soon_threadsafe(self._exit, reap(pid))

        threading.Thread(target=wait_for_exit, name=f"reap-{pid}", daemon=True).start()

    def _exit(self, code: int) -> None:
        self.returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


@dataclass
class Adoption:
    process: Adopted
    spawned_at: float  # early.since_pid1() when it was started
    notice: int = -1  # the pipe that says it is ready
    tell: int = -1  # the pipe to close once it is


def adopt(started: Early | None) -> dict[str, Adoption]:
    if started is None:
        return {}
    adopted = {name: Adoption(Adopted(pid), started.spawned_at[name]) for name, pid in started.pids.items()}
    adopted["xvfb"].notice = started.notice  # the sizer's: up, and at its size
    adopted["xfce4"].tell = started.wm_ready
    return adopted


def reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status)


class Pipes:
    """The pipes of one process start: the child's ends (passed to it, then closed here) and
    the service's (closed at the end of the start, or earlier to tell the child something)."""

    def __init__(self) -> None:
        self.child: list[int] = []
        self.ours: list[int] = []

    def to_child(self) -> tuple[int, int]:
        """(the child's read end, ours to close when the child is to go on)."""
        read_end, write_end = os.pipe()
        self.child.append(read_end)
        self.ours.append(write_end)
        return read_end, write_end

    def from_child(self) -> tuple[int, int]:
        """(our read end, the child's write end)."""
        read_end, write_end = os.pipe()
        self.ours.append(read_end)
        self.child.append(write_end)
        return read_end, write_end

    def close(self, fd: int) -> None:
        if fd in self.ours:
            self.ours.remove(fd)
            os.close(fd)

    def close_child(self) -> None:
        for fd in self.child:
            os.close(fd)
        self.child = []

    def close_all(self) -> None:
        self.close_child()
        for fd in self.ours:
            os.close(fd)
        self.ours = []


async def notified(fd: int, timeout_s: float) -> bytes:
    """Wait until the process writes to (what it wrote) or closes (b"": it died) the pipe ``fd``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not done.done():
            done.set_result(data)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(fd)
