"""The agent's failures as typed exceptions (``atoll._exceptions``), by error code, never by text.

The agent (``agent.c``) answers a request it could not carry out with ``E errno step message``:
a decimal errno saying why, the step that failed (``request``, ``cwd``, ``exec``, ``fork``,
``spool``, ``table``, ``pid``, ``stdin``) and text for people. The step matters where one errno
means two things (ENOENT: no such working directory, or no such program); otherwise the errno
alone picks the type. The reply is untrusted input: its text is cut short and made printable,
and the conflicts a client sees get fixed messages.

An agent built before these codes (still PID 1 of a sandbox restored from an old checkpoint)
answers ``E keyword ...``, where the keyword is one of a fixed set: ``_LEGACY`` gives each the
errno and step today's agent sends for the same failure.
"""

from __future__ import annotations

import errno

from atoll._exceptions import (
    BadWorkingDirectory,
    ExecSetupFailed,
    ProcessLimitReached,
    ProcessNotFound,
    ProcessStateConflict,
    ProcessTableFull,
    SandboxFailure,
)

MAX_MESSAGE_CHARS = 300

_BY_ERRNO: dict[int, type[SandboxFailure]] = {
    errno.EAGAIN: ProcessLimitReached,
    errno.ENOMEM: ProcessLimitReached,
    errno.EBUSY: ProcessTableFull,
    errno.ESRCH: ProcessNotFound,
    errno.ECHILD: ProcessStateConflict,
    errno.EBADF: ProcessStateConflict,
    errno.ETIMEDOUT: ProcessStateConflict,
}
# fixed messages where the agent's own would reach a client in a 404 or 409
_MESSAGES = {
    errno.ESRCH: "no such process",
    errno.ECHILD: "the process has ended",
    errno.EBADF: "the process was started without stdin",
    errno.ETIMEDOUT: "the process is not reading its stdin (its pipe stayed full)",
}
# the old agent's first word -> (errno, step) of today's agent for the same failure
_LEGACY: dict[str, tuple[int, str]] = {
    "bad": (errno.EINVAL, "request"),
    "chdir": (errno.ENOENT, "cwd"),
    "exec": (errno.ENOENT, "exec"),
    "fork": (errno.EAGAIN, "fork"),
    "spool": (errno.EIO, "spool"),
    "busy": (errno.EBUSY, "table"),
    "unknown": (errno.ESRCH, "pid"),
    "ended": (errno.ECHILD, "pid"),
    "nostdin": (errno.EBADF, "stdin"),
    "full": (errno.ETIMEDOUT, "stdin"),
}


def failure(code: int, step: str, message: str) -> SandboxFailure:
    """The typed failure for errno ``code`` at ``step``: ``cwd`` is the working directory whatever
    the errno, ``fork`` is making the process whatever the errno; else the errno decides."""
    if step == "cwd":
        return BadWorkingDirectory(message, errno=code)
    if step == "fork":
        return ProcessLimitReached(message, errno=code)
    kind = _BY_ERRNO.get(code, ExecSetupFailed)
    return kind(_MESSAGES.get(code, message), errno=code)


def parse(reply: bytes) -> SandboxFailure:
    """The failure an agent's ``E`` line reports; ``reply`` is what follows ``E ``."""
    text = reply.decode("utf-8", "replace").strip()[:MAX_MESSAGE_CHARS]
    text = "".join(c if c.isprintable() else "?" for c in text)
    first, _, rest = text.partition(" ")
    if first.isdigit() and len(first) <= 4:
        step, _, message = rest.partition(" ")
        return failure(int(first), step, message or step or "the agent gave no reason")
    code, step = _LEGACY.get(first.rstrip(":"), (errno.EIO, "unknown"))
    return failure(code, step, text or "the agent gave no reason")
