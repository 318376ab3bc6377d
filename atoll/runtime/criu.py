"""Facts about the host's CRIU, which runc uses for checkpoint and restore."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from atoll.runtime.commands import CommandFailed, CommandTimeout, run_sync

# lines CRIU logs as errors that say nothing about why an operation failed
_NOISE = ("Can't setup RLIMIT_NOFILE",)


@functools.cache
def works() -> bool:
    """A usable CRIU is installed (``scripts/setup-criu.sh`` builds one that fits the kernel)."""
    binary = shutil.which("criu")
    if binary is None:
        return False
    try:
        run_sync([binary, "check"], timeout=30)
    except (CommandFailed, CommandTimeout, OSError):
        return False
    return True


def log_errors(log: Path, limit: int = 5) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [
        line.split(": ", 1)[-1] for line in lines if "Error (" in line and not any(n in line for n in _NOISE)
    ]
    return "; ".join(errors[:limit])
