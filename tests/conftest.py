"""Shared fixtures: one real ``atoll serve`` per test session (root, real runtime, real network),
a leak check after every test that creates sandboxes, and raw HTTP and SDK clients."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support.leaks import assert_no_leaks
from tests._support.server import ServerProcess


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        for item in items:
            if "privileged" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs root: run `make test` as root"))


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-", dir="/var/tmp"))
    proc = ServerProcess(data_dir=data_dir)
    proc.start()
    try:
        yield proc
    finally:
        # leave nothing behind: delete what the tests left, then stop the server
        try:
            with httpx.Client(base_url=proc.base_url, headers=proc.headers, timeout=60) as http:
                for item in http.get("/v1/sandboxes", params={"page-size": 100}).json().get("items", []):
                    http.delete(f"/v1/sandbox/{item['id']}/")
        except httpx.HTTPError:
            pass
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
        yield client


@pytest.fixture
def no_leaks(server: ServerProcess) -> Iterator[None]:
    """Use in every test that creates sandboxes: after it, the host holds nothing extra."""
    yield
    assert_no_leaks(server)
