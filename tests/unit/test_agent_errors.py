"""The agent's failures, typed by errno (``atoll.runtime.agent_errors``), and the one table that
answers each type over HTTP (``atoll.server.errors.http_error``). Pure logic: the real agent
answering these is tests/runtime/test_agent_errors.py, the server's answers tests/server."""

from __future__ import annotations

import errno

import pytest

from atoll._exceptions import (
    AgentProtocolError,
    AgentUnavailable,
    BadRequestError,
    BadWorkingDirectory,
    CapacityError,
    ConflictError,
    ExecSetupFailed,
    NotFoundError,
    ProcessLimitReached,
    ProcessNotFound,
    ProcessStateConflict,
    ProcessTableFull,
    SandboxFailure,
    SandboxNotRunning,
    ServerError,
    TerminalStartFailed,
)
from atoll.runtime import agent_errors
from atoll.server.errors import http_error


@pytest.mark.parametrize(
    ("line", "kind", "code"),
    [
        (b"2 cwd chdir /nope: No such file or directory", BadWorkingDirectory, errno.ENOENT),
        (b"20 cwd chdir /etc/passwd: Not a directory", BadWorkingDirectory, errno.ENOTDIR),
        (b"13 cwd chdir /root: Permission denied", BadWorkingDirectory, errno.EACCES),
        # the same errno at another step is another failure: no such program, not no such cwd
        (b"2 exec exec nope: No such file or directory", ExecSetupFailed, errno.ENOENT),
        (b"11 fork fork: Resource temporarily unavailable", ProcessLimitReached, errno.EAGAIN),
        (b"12 fork fork: Cannot allocate memory", ProcessLimitReached, errno.ENOMEM),
        (b"24 fork pipe: Too many open files", ProcessLimitReached, errno.EMFILE),  # any fork step
        (b"11 spool spool: Resource temporarily unavailable", ProcessLimitReached, errno.EAGAIN),
        (b"28 spool spool: No space left on device", ExecSetupFailed, errno.ENOSPC),
        (b"16 table busy: at most 64 processes run at once", ProcessTableFull, errno.EBUSY),
        (b"3 pid no such process", ProcessNotFound, errno.ESRCH),
        (b"10 pid the process has ended", ProcessStateConflict, errno.ECHILD),
        (b"9 stdin the process was started without stdin", ProcessStateConflict, errno.EBADF),
        (b"110 stdin the process is not reading its stdin", ProcessStateConflict, errno.ETIMEDOUT),
        (b"22 request bad request", ExecSetupFailed, errno.EINVAL),
    ],
)
def test_an_errno_and_step_choose_the_type(line: bytes, kind: type[SandboxFailure], code: int) -> None:
    failure = agent_errors.parse(line)
    assert type(failure) is kind and failure.errno == code, failure


@pytest.mark.parametrize(
    ("line", "kind", "code"),
    [
        (b"chdir /nope: No such file or directory", BadWorkingDirectory, errno.ENOENT),
        (b"exec nope: No such file or directory", ExecSetupFailed, errno.ENOENT),
        (b"fork: Resource temporarily unavailable", ProcessLimitReached, errno.EAGAIN),
        (b"fork: Cannot allocate memory", ProcessLimitReached, errno.EAGAIN),
        (b"spool: No space left on device", ExecSetupFailed, errno.EIO),
        (b"busy: at most 64 processes run at once", ProcessTableFull, errno.EBUSY),
        (b"unknown", ProcessNotFound, errno.ESRCH),
        (b"ended", ProcessStateConflict, errno.ECHILD),
        (b"nostdin", ProcessStateConflict, errno.EBADF),
        (b"full: the process is not reading its stdin", ProcessStateConflict, errno.ETIMEDOUT),
        (b"bad request", ExecSetupFailed, errno.EINVAL),
    ],
)
def test_an_agent_from_an_old_checkpoint_is_typed_by_its_keyword(
    line: bytes, kind: type[SandboxFailure], code: int
) -> None:
    failure = agent_errors.parse(line)
    assert type(failure) is kind and failure.errno == code, failure


def test_conflicts_get_fixed_messages_not_the_agents_text() -> None:
    assert agent_errors.parse(b"10 pid <script>evil</script>").message == "the process has ended"
    assert agent_errors.parse(b"3 pid whatever").message == "no such process"
    assert agent_errors.parse(b"nostdin junk").message == "the process was started without stdin"


@pytest.mark.parametrize(
    "line",
    [b"", b"   ", b"garbage", b"99999999 cwd x", b"-1 cwd x", b"\xff\xfe\x00\x1b[31m", b"7" * 5000],
)
def test_anything_else_is_a_plain_setup_failure_with_bounded_printable_text(line: bytes) -> None:
    failure = agent_errors.parse(line)
    assert type(failure) is ExecSetupFailed
    assert failure.message and len(failure.message) <= agent_errors.MAX_MESSAGE_CHARS
    assert failure.message.isprintable()


@pytest.mark.parametrize(
    ("failure", "api", "status", "retry_after"),
    [
        (BadWorkingDirectory("x", errno=errno.ENOENT), BadRequestError, 400, None),
        (ProcessLimitReached("x", errno=errno.EAGAIN), CapacityError, 503, 1),
        (ProcessTableFull("x", errno=errno.EBUSY), CapacityError, 503, 1),
        (SandboxNotRunning("x"), ConflictError, 409, None),
        (AgentUnavailable("x"), ConflictError, 409, None),
        (ProcessNotFound("x"), NotFoundError, 404, None),
        (ProcessStateConflict("the process has ended"), ConflictError, 409, None),
        (TerminalStartFailed("x"), ServerError, 500, None),
        (AgentProtocolError("x"), ServerError, 500, None),
        (ExecSetupFailed("x"), ServerError, 500, None),
        (SandboxFailure("x"), ServerError, 500, None),
    ],
)
def test_each_type_has_one_http_answer(
    failure: SandboxFailure, api: type[Exception], status: int, retry_after: int | None
) -> None:
    answer = http_error(failure)
    assert type(answer) is api and answer.status_code == status and answer.retry_after == retry_after


def test_a_bad_cwd_names_the_field_and_the_subject() -> None:
    answer = http_error(BadWorkingDirectory("chdir /x: No such file or directory"), subject="PTY")
    assert answer.message == "invalid PTY parameters"
    assert answer.errors == [{"field": "cwd", "error": "directory does not exist"}]
    assert "background processes" in http_error(ProcessTableFull("x")).message
    assert "no longer running" in http_error(SandboxNotRunning("x")).message


def test_a_subclass_without_a_row_of_its_own_takes_its_parents() -> None:
    class NewKindOfCwdTrouble(BadWorkingDirectory):
        pass

    assert http_error(NewKindOfCwdTrouble("x")).status_code == 400
