"""Servers of the reliability suite's own (a spare instance, see ``spare_server``): these tests
kill them, break their runtime, fill their disks and take their templates away."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from atoll.runtime.trees import remove_host_tree
from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess, spare_server

SpareServer = Callable[..., AbstractContextManager[ServerProcess]]


@contextmanager
def _spare(*extra_args: str, prepare: Callable[[Path], None] | None = None) -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-rel-", dir="/var/tmp"))
    if prepare is not None:
        prepare(data_dir)
    proc = spare_server(data_dir, *extra_args)
    proc.start()
    try:
        yield proc
        assert_no_leaks(proc)
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.delete_everything()
        proc.stop()
        with contextlib.suppress(OSError):  # sandbox-made trees of any depth: never shutil.rmtree
            remove_host_tree(data_dir)


@pytest.fixture
def spare() -> SpareServer:
    """``with spare(*serve_args) as server:`` a running spare server; on leaving, the leak
    check runs against it (test failures inside skip it), then it is emptied and stopped."""
    return _spare
