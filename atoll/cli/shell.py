"""``atoll sandbox shell``: an interactive terminal in a sandbox, from the local terminal.

The local terminal goes into raw mode (every keystroke, Ctrl-C included, goes to the sandbox);
one thread copies the sandbox's output to stdout while the main thread copies stdin to the
sandbox, and SIGWINCH resizes the remote terminal to match. Leaving the shell (``exit``) ends
the session; the local terminal's mode is restored whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from types import FrameType
from typing import Any

READ_SIZE = 65536


def _size() -> tuple[int, int]:
    """The local terminal's size as it is now (COLUMNS/LINES would be stale after a resize)."""
    for stream in (sys.stdout, sys.stdin):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(stream.fileno())
            if size.columns and size.lines:
                return size.columns, size.lines
    fallback = shutil.get_terminal_size((80, 24))
    return fallback.columns, fallback.lines


def run_shell(sandbox: Any, *, cwd: str | None = None) -> int:
    """Attach the local terminal to a new PTY session of ``sandbox`` (a sync ``Sandbox``)."""
    cols, rows = _size()
    session = sandbox.pty.create(cols=cols, rows=rows, cwd=cwd, lazy_start=True)
    done = threading.Event()
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None

    def on_resize(_signum: int, _frame: FrameType | None) -> None:
        columns, lines = _size()
        # not from the signal handler itself: an HTTP call there could interleave with the main thread's
        threading.Thread(
            target=lambda: sandbox.pty.resize(session.id, cols=columns, rows=lines), daemon=True
        ).start()

    if interactive:
        # raw before anything can arrive, and without discarding what was already typed
        tty.setraw(stdin, termios.TCSADRAIN)
    try:
        with sandbox.pty.connect(session.id) as conn:

            def pump_output() -> None:
                try:
                    while data := conn.recv():
                        os.write(sys.stdout.fileno(), data)
                except Exception:
                    pass
                finally:
                    done.set()

            reader = threading.Thread(target=pump_output, daemon=True)
            reader.start()
            previous = signal.signal(signal.SIGWINCH, on_resize)
            try:
                while not done.is_set():
                    ready, _, _ = select.select([stdin], [], [], 0.2)
                    if ready:
                        data = os.read(stdin, READ_SIZE)
                        if not data:
                            break
                        conn.send(data)
            finally:
                signal.signal(signal.SIGWINCH, previous)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            sandbox.pty.delete(session.id)
    return 0
