"""The one place Atoll starts host commands: every argv is logged with its rc and duration,
bounded by a timeout, and a failure raises ``CommandFailed`` carrying stderr's tail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("atoll.proc")


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: bytes) -> None:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        super().__init__(f"{argv[0]} exited {returncode}: {tail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = tail


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
    would never reach EOF and a file would tie the daemon to a host path (no checkpoint)."""
    started = time.perf_counter()
    output = subprocess.DEVNULL if error_log is not None else subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        env=dict(env) if env is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandTimeout(argv, timeout) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    rc = proc.returncode if proc.returncode is not None else -1
    if error_log is not None:
        err = error_log.read_bytes()[-4000:] if error_log.exists() else b""
    log.debug("%s rc=%d %.1fms", " ".join(argv), rc, (time.perf_counter() - started) * 1000)
    if check and rc != 0:
        raise CommandFailed(argv, rc, err)
    return rc, out, err


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
