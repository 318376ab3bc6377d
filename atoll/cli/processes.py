"""``atoll sandbox exec/ps/logs/kill``: commands and background processes from the shell, their
output streamed as the sandbox produces it (``spec/processes.md``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table


def _writer(stream: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def exec_streamed(sandbox: Any, command: str, *, cwd: str | None, timeout: int | None) -> int:
    """Run ``command``, its output copied to ours as it comes; returns its exit code."""
    result = sandbox.process.execute(
        command=command,
        cwd=cwd,
        timeout=timeout,
        on_stdout=_writer(sys.stdout),
        on_stderr=_writer(sys.stderr),
    )
    return int(result.exit_code)


def start_background(sandbox: Any, command: str, *, cwd: str | None, tag: str | None) -> int:
    return int(sandbox.process.start(command, cwd=cwd, tag=tag).pid)


def show_processes(sandbox: Any, console: Console) -> None:
    table = Table("PID", "RUNNING", "EXIT", "STARTED", "TAG", "COMMAND")
    for item in sandbox.process.list():
        exit_code = "" if item.exit_code is None else str(item.exit_code)
        running = "yes" if item.running else "no"
        table.add_row(str(item.pid), running, exit_code, item.started_at or "", item.tag or "", item.command)
    console.print(table)


def show_logs(sandbox: Any, pid: int, *, follow: bool) -> int:
    """What the sandbox kept of the process's output; with ``follow``, on until it ends (its
    exit code returned then)."""
    if not follow:
        emit(sandbox.process.logs(pid))
        return 0
    handle = sandbox.process.connect(pid)
    emit(handle)
    return int(handle.exit_code or 0)


def emit(events: Iterable[Any]) -> None:
    out, err = _writer(sys.stdout), _writer(sys.stderr)
    for event in events:
        if event.type == "stdout":
            out(event.data)
        elif event.type == "stderr":
            err(event.data)
        elif event.type == "truncated":
            err("[atoll: older output was dropped]\n")
