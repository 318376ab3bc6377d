"""What a failed transition answers (``atoll.server.transitions.failure``): pure logic, no server."""

from __future__ import annotations

import errno

from atoll._exceptions import CapacityError, ServerError
from atoll.server import transitions


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("copying the disk image failed") from inner
    except RuntimeError as outer:
        return outer


def test_enospc_anywhere_in_the_chain_is_a_503_with_retry_after() -> None:
    answer = transitions.failure("sandbox failed to start", _raised_from(OSError(errno.ENOSPC, "full")))
    assert isinstance(answer, CapacityError)
    assert answer.status_code == 503 and answer.retry_after == transitions.NO_SPACE_RETRY_AFTER_S
    assert "no disk space" in answer.message


def test_other_failures_stay_500_and_timeouts_504() -> None:
    plain = transitions.failure("sandbox failed to stop", _raised_from(OSError(errno.EIO, "io")))
    assert type(plain) is ServerError and plain.status_code == 500
    timed = transitions.failure("sandbox failed to resume", ServerError("resume timed out", status_code=504))
    assert timed.status_code == 504
