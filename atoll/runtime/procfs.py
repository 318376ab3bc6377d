"""The one reader of the host's process table (``/proc/<pid>/stat``), for the backends (a timeout
kill, gVisor's dead sentries) and the reaper (zombies orphaned to the server)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str  # the command name (at most 15 bytes, set by the process itself: untrusted)
    state: str  # R, S, D, Z, T ...
    ppid: int
    session: int
    start_ticks: int  # clock ticks after boot: with the pid, names one process for good


def read_stat(pid: int | str) -> ProcStat | None:
    """``pid``'s entry, or None when it is gone (or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ")"
    end = raw.rfind(b")")
    fields = raw[end + 2 :].split()
    if end < 0 or len(fields) < 20:
        return None
    comm = raw[raw.find(b"(") + 1 : end].decode(errors="replace")
    # the fields after comm: state ppid pgrp session tty_nr tpgid flags ... starttime (the 20th)
    return ProcStat(
        pid=int(pid),
        comm=comm,
        state=fields[0].decode(errors="replace"),
        ppid=int(fields[1]),
        session=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def processes(pids: Iterable[int | str] | None = None) -> Iterator[ProcStat]:
    """The entries of ``pids`` (None: every process on the host) that are still there."""
    if pids is None:
        pids = (entry.name for entry in os.scandir("/proc") if entry.name.isdigit())
    for pid in pids:
        if (stat := read_stat(pid)) is not None:
            yield stat


def cmdline(pid: int | str) -> list[str] | None:
    """``pid``'s argv (empty for a kernel thread or a zombie), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def has_flag(argv: list[str], flag: str, value: str) -> bool:
    """``argv`` passes ``flag`` ``value``, as two words or as ``flag=value``."""
    if f"{flag}={value}" in argv:
        return True
    return any(word == flag and following == value for word, following in itertools.pairwise(argv))
