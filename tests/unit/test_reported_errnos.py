"""A tool's error lines back to errno codes (``commands.reported_errnos``), and what a failed
snapshot answers for each (``snapshots.capture_error``): typed by code, never by words."""

from __future__ import annotations

import errno

import pytest

from atoll.runtime.commands import CommandFailed, line_errno, reported_errnos
from atoll.runtime.spec import CheckpointFailed
from atoll.server.snapshots import capture_error


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("cp: cannot create regular file '/s/x': No space left on device", errno.ENOSPC),
        ("cp: cannot stat '/s/gone': No such file or directory", errno.ENOENT),
        ("cp: cannot stat 'aaaa/bbbb': File name too long", errno.ENAMETOOLONG),
        ("Error (criu/files-reg.c:1): Can't open 'x': File name too long", errno.ENAMETOOLONG),
        ("cp: a file named 'No space left on device' was skipped", None),  # the words, not the code
        ("cp: warning: source file specified more than once", None),
        ("No space left on device", None),  # not a ``...: <strerror>`` report
    ],
)
def test_a_line_reports_the_errno_its_strerror_names(line: str, code: int | None) -> None:
    assert line_errno(line) == code


def test_every_non_empty_line_counts() -> None:
    text = "cp: x: No such file or directory\n\n  \ncp: something else\n"
    assert reported_errnos(text) == [errno.ENOENT, None]


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (CommandFailed(["cp"], 1, b"cp: cannot create regular file 'x': No space left on device\n"), 507),
        (CommandFailed(["cp"], 1, b"cp: cannot stat 'a/b': File name too long\n"), 400),
        (CheckpointFailed("Error (criu/x.c:1): cannot write: No space left on device"), 507),
        (OSError(errno.ENOSPC, "No space left on device"), 507),
        (OSError(errno.ENAMETOOLONG, "File name too long"), 400),
        (CommandFailed(["cp"], 1, b"cp: 'No space left' is a fine name: Permission denied\n"), 500),
        (CheckpointFailed("dump failed"), 500),
    ],
)
def test_a_failed_snapshot_answers_by_errno(failure: BaseException, status: int) -> None:
    assert capture_error(failure).status_code == status
