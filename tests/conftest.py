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

from tests._support import api, cluster, orphans
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer, running_postgres
from tests._support.server import ServerProcess

# What no backend changes: the SDK against its mock transport, the dashboard's pages, the router's
# request-head rules and TLS, API validation and limits, tenant checks. `make test` runs the whole
# suite on OCI and, on its gVisor pass, only what can differ there (the sandboxes themselves).
BACKEND_NEUTRAL = (
    "tests/unit/",
    "tests/sdk/",
    "tests/dashboard/",
    "tests/router/test_certs.py",
    "tests/router/test_headers.py",
    "tests/router/test_listener.py",
    "tests/router/test_lookup.py",
    "tests/router/test_names.py",
    "tests/router/test_tls.py",
    "tests/reliability/test_api_fuzz.py",
    "tests/reliability/test_conn_guard_unit.py",
    "tests/reliability/test_input_limits.py",
    "tests/reliability/test_slowloris.py",
    "tests/security/test_escape_router.py",
    "tests/security/test_tenants.py",
    # host-side work the same for both backends: deep trees walked, copied and removed on the
    # host, sandbox disks (loop images) and the watermark, snapshot copies, the SSH gateway's bounds
    "tests/reliability/test_deep_trees.py::test_filesystem_api_on_a_deep_tree",
    "tests/reliability/test_deep_trees.py::test_snapshot_of_a_deep_tree_then_restart",
    "tests/reliability/test_disk_full.py",
    "tests/server/test_snapshots_copy.py",
    "tests/server/test_openapi_responses.py",
    "tests/server/test_settings_serve.py",
    "tests/ssh/test_bounds.py",
    "tests/ssh/test_ssh_expiry.py",  # the gateway's clock
    # the store on SQLite and PostgreSQL, cluster membership and the Kubernetes manifests
    "tests/store/",
    "tests/cluster/",
    # no sandbox at all: the code interpreter service run on the host, pure egress pieces, path
    # confinement on a plain directory, gVisor's bundle as values, the agent on the loopback
    "tests/services/test_code_interpreter_service.py",
    "tests/network/test_egress_units.py",
    "tests/runtime/test_confined.py",
    "tests/runtime/test_gvisor_config.py",
    "tests/runtime/test_agent_errors.py",
    "tests/runtime/test_agent_pacing.py",
    # host-side trees and mounts, which count the test process's own fds: on the gVisor pass its
    # orphan reaper's thread opens /proc files at any moment (tests/_support/orphans.py)
    "tests/runtime/test_trees.py",
    "tests/runtime/test_overlay_idmapped.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # a killed server's gVisor processes are reaped here at once, not late by the host's PID 1
    if os.environ.get("ATOLL_TEST_RUNTIME", "") == "runsc":
        orphans.start()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    neutral_skip = pytest.mark.skip(reason="backend-neutral: runs on the OCI pass of `make test`")
    second_backend = os.environ.get("ATOLL_TEST_RUNTIME", "") == "runsc"
    for item in items:
        if os.geteuid() != 0 and "privileged" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root: run `make test` as root"))
        elif second_backend and item.nodeid.startswith(BACKEND_NEUTRAL):
            item.add_marker(neutral_skip)


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-", dir="/var/tmp"))
    database_url = None
    if os.environ.get("ATOLL_TEST_DATABASE", "sqlite") == "postgresql":  # the suite on PostgreSQL
        database_url = request.getfixturevalue("postgres").create_database()
    if cluster.ENABLED and database_url is None:  # a cluster's store is PostgreSQL
        database_url = request.getfixturevalue("postgres").create_database()
    proc = cluster.session_server(data_dir, database_url)
    proc.start()
    try:
        yield proc
    finally:
        # leave nothing behind: delete what the tests left, then stop the server
        proc.delete_everything()
        if isinstance(proc, cluster.ClusterEntry):
            proc.stop_all()
        else:
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
    if server.unremovable_leak:
        print(f"leak check skipped: a restart did not remove this server's leak ({server.unremovable_leak})")
        return
    try:
        assert_no_leaks(server)
    except AssertionError as exc:
        # one leak must not fail every later test on the same server (at 15 s each, a CI run
        # spent an hour on one container): a restart's reconciliation removes what no record
        # owns; what it cannot remove has failed this test, and is not reported again
        print(f"the server's log, last lines:\n{server.log_tail(40)}")
        server.stop()
        server.start()
        try:
            assert_no_leaks(server)
        except AssertionError:
            server.unremovable_leak = " ".join(str(exc).splitlines()[1:2])[:300]
        raise


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    """One sandbox shared by a module's tests, where isolation between them is not what is tested.
    It lives an hour: a module can outlast the default 300 s (gVisor on a busy host), and an
    expired sandbox would fail every test after it."""
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client:
        sid = api.create(client, timeout=3600)["id"]
        yield sid
        client.delete(f"/v1/sandbox/{sid}/")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (Debian's binaries, a cluster under /var/tmp, a unix socket
    only), for the store's and the cluster's tests; each test makes its own database in it."""
    if os.geteuid() != 0:
        pytest.skip("PostgreSQL runs as the postgres user: needs root to start it")
    with running_postgres() as server:
        yield server
