"""A file operation's OSError as its typed failure (``confined.file_error``, by errno), and the
answer each type gets (``server/errors.py``): the same statuses the filesystem API always gave."""

from __future__ import annotations

import errno

import pytest

from atoll._exceptions import (
    FileAccessDenied,
    FileConflict,
    FileFailure,
    FileNotFound,
    FileRequestInvalid,
    FileStorageFull,
    FilesystemNotMounted,
    HostCapacityExhausted,
    ImageRejected,
    OperationFailure,
    TemplateConflict,
    TemplateFailure,
    TemplateNotFound,
)
from atoll.runtime.confined import file_error
from atoll.server.errors import http_error


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (errno.ENOENT, FileNotFound, 404),
        (errno.ENOTDIR, FileNotFound, 404),
        (errno.EEXIST, FileConflict, 409),
        (errno.ENOTEMPTY, FileConflict, 409),
        (errno.EBUSY, FileConflict, 409),
        (errno.EACCES, FileAccessDenied, 403),
        (errno.EROFS, FileAccessDenied, 403),
        (errno.EXDEV, FileAccessDenied, 403),
        (errno.EISDIR, FileRequestInvalid, 400),
        (errno.ELOOP, FileRequestInvalid, 400),
        (errno.ENAMETOOLONG, FileRequestInvalid, 400),
        (errno.ENOSPC, FileStorageFull, 507),
        (errno.EDQUOT, FileStorageFull, 507),
        (errno.EIO, FileFailure, 500),
    ],
)
def test_an_errno_is_a_type_and_the_type_one_status(code: int, kind: type[FileFailure], status: int) -> None:
    failure = file_error(OSError(code, "x"), "/a/b")
    assert type(failure) is kind and failure.errno == code
    assert failure.message.startswith("/a/b: ")
    assert http_error(failure).status_code == status


def test_fields_at_fault_reach_the_answer() -> None:
    failure = FileRequestInvalid("invalid edit", errors=[{"field": "find", "error": "must not be empty"}])
    answer = http_error(failure)
    assert answer.status_code == 400 and answer.errors == [{"field": "find", "error": "must not be empty"}]


def test_a_stopped_sandboxs_filesystem_is_a_conflict() -> None:
    answer = http_error(FilesystemNotMounted("the sandbox's filesystem is not mounted"))
    assert answer.status_code == 409 and "not mounted" in answer.message


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (TemplateNotFound("template 'x' not found"), 404),
        (TemplateConflict("a template named 'x' already exists"), 409),
        (ImageRejected("the image has no manifest", errors=[{"field": "uri", "error": "no manifest"}]), 400),
        (TemplateFailure("malformed digest"), 500),
        (HostCapacityExhausted("no free sandbox network address; widen the sandbox subnet"), 503),
    ],
)
def test_templates_and_the_network_are_typed_too(failure: OperationFailure, status: int) -> None:
    answer = http_error(failure)
    assert answer.status_code == status and answer.message == failure.message
    if isinstance(failure, ImageRejected):
        assert answer.errors == [{"field": "uri", "error": "no manifest"}]
