"""The one place Atoll starts host commands: every argv is logged with its rc and duration,
bounded by a timeout, and a failure raises ``CommandFailed`` carrying stderr's tail.

A tool that hits a system error reports it only as text, ``...: <strerror>`` (GNU tools, CRIU's
``pr_perror``). ``reported_errnos`` turns such lines back into errno codes, by the exact text
``os.strerror`` gives each code, so callers branch on codes, never on words; run the tool with
``c_locale()`` so that its strerror is the same (untranslated) text."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from atoll.runtime import reaping

log = logging.getLogger("atoll.proc")
_ERRNO_BY_TEXT = {os.strerror(code): code for code in errno.errorcode}


def c_locale() -> dict[str, str]:
    """The server's environment with a tool's messages (and their strerror) untranslated."""
    return {**os.environ, "LC_ALL": "C"}


def line_errno(line: str) -> int | None:
    """The errno a line ``...: <strerror>`` reports (None: it reports none)."""
    _, sep, tail = line.strip().rpartition(": ")
    return _ERRNO_BY_TEXT.get(tail) if sep else None


def reported_errnos(text: str) -> list[int | None]:
    """Per non-empty line of a tool's stderr, the errno it reports (None where it reports none)."""
    return [line_errno(line) for line in text.splitlines() if line.strip()]


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: bytes) -> None:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        super().__init__(f"{argv[0]} exited {returncode}: {tail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = tail
        self.errnos = {code for code in reported_errnos(tail) if code is not None}


class CommandTimeout(RuntimeError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:g}s")
        self.argv = list(argv)


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    error_log: Path | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to completion; returns (rc, stdout, stderr).

    With ``error_log``, stdout and stderr are /dev/null and "stderr" is that log's tail: for
    commands that leave a daemon behind holding their stdio (``run --detach``), where a pipe
    would never reach EOF and a file would tie the daemon to a host path (no checkpoint).

    Started with ``subprocess.Popen`` (vfork: a fraction of a millisecond) rather than the event
    loop's own spawn, which forks the whole server process: several milliseconds of page-table
    copying per command, with the event loop stopped, that under a burst of creates added up to
    a large part of the server's time. Waited for without blocking the loop (a pidfd, and
    non-blocking pipes)."""
    started = time.perf_counter()
    output = subprocess.DEVNULL if error_log is not None else subprocess.PIPE
    proc = subprocess.Popen(  # noqa: ASYNC220 (vfork: returns in well under a millisecond)
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(_communicate(proc, input), timeout)
    except TimeoutError:
        await _kill(proc)
        raise CommandTimeout(argv, timeout) from None
    except BaseException:  # cancelled: the command goes with the request
        await _kill(proc)
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    if error_log is not None:
        err = error_log.read_bytes()[-4000:] if error_log.exists() else b""
    log.debug("%s rc=%d %.1fms", " ".join(argv), rc, (time.perf_counter() - started) * 1000)
    if check and rc != 0:
        raise CommandFailed(argv, rc, err)
    return rc, out, err


async def _communicate(proc: subprocess.Popen[bytes], input: bytes | None) -> tuple[bytes, bytes]:
    """Feed ``input``, read stdout and stderr to EOF and wait for the exit, all on the loop."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[Any]] = []
    readers: list[int] = []  # fds with a reader on the loop
    writers: list[int] = []

    def read_all(pipe: IO[bytes]) -> list[bytes]:
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        chunks: list[bytes] = []
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                chunks.append(data)
                return
            loop.remove_reader(fd)
            readers.remove(fd)
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        readers.append(fd)
        waits.append(done)
        return chunks

    def feed(pipe: IO[bytes], data: bytes) -> None:
        if not data:
            pipe.close()
            return
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        done: asyncio.Future[None] = loop.create_future()

        def writable() -> None:
            nonlocal view
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                return
            except OSError:  # the command did not read it all (as communicate() allows)
                view = view[len(view) :]
            if not view:
                loop.remove_writer(fd)
                writers.remove(fd)
                pipe.close()
                if not done.done():
                    done.set_result(None)

        loop.add_writer(fd, writable)
        writers.append(fd)
        waits.append(done)

    try:
        if proc.stdin is not None:
            feed(proc.stdin, input or b"")
        out = read_all(proc.stdout) if proc.stdout is not None else []
        err = read_all(proc.stderr) if proc.stderr is not None else []
        waits.append(asyncio.ensure_future(_wait(proc)))
        await asyncio.gather(*waits)
        return b"".join(out), b"".join(err)
    finally:
        for fd in readers:
            loop.remove_reader(fd)
        for fd in writers:
            loop.remove_writer(fd)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


async def _wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the exit through a pidfd (readable once the process has exited), then reap."""
    await reaping.exited(proc.pid)
    return proc.wait()


async def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await _wait(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def run_sync(argv: Sequence[str], *, timeout: float = 600.0, check: bool = True) -> tuple[int, bytes, bytes]:
    """Blocking twin for set-up paths that run before an event loop exists (CLI, template builds)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(argv, timeout) from None
    log.debug("%s rc=%d %.1fms", " ".join(argv), done.returncode, (time.perf_counter() - started) * 1000)
    if check and done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr)
    return done.returncode, done.stdout, done.stderr
