"""A real ``atoll serve`` takes each setting from its ``ATOLL_`` variable, and from its option
over the variable (the options are generated from ``Settings``: atoll.cli.serve_options). The
settings seen here are the CPU over-commit (the health report's vCPU budget is made of it) and
the templates an organisation may import."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._support.server import ServerProcess, spare_server

pytestmark = [pytest.mark.privileged]
SERVE_ARGS = ("--no-build-template",)  # make test builds it first


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atoll-test-settings-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _observe(server: ServerProcess) -> tuple[int, int]:
    """The vCPU budget (the CPU over-commit times the CPUs) and the status of a template import
    (409 at once when max_templates_per_org is 0), from a fresh start of ``server``."""
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as http:
            budget = int(http.get("/v1/health").json()["capacity"]["vcpu_budget"])
            archive = server.data_dir / "imports" / "image.tar"
            archive.parent.mkdir(exist_ok=True)
            archive.write_bytes(b"not an image")  # a source that exists, so the limit is what answers
            uri = f"oci-archive:{archive}"
            imported = http.post("/v1/template", json={"name": "settings-probe", "uri": uri})
            return budget, imported.status_code
    finally:
        server.stop()
        assert server.proc is not None and server.proc.returncode == 0, server.log_tail()


def test_env_var_then_option_take_effect(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = os.cpu_count() or 1
    # the server inherits the test's environment; max_templates_per_org had no variable before
    monkeypatch.setenv("ATOLL_CPU_OVERCOMMIT", "3")
    monkeypatch.setenv("ATOLL_MAX_TEMPLATES_PER_ORG", "0")
    assert _observe(spare_server(data_dir, *SERVE_ARGS, tag="e")) == (cpus * 3, 409)
    monkeypatch.setenv("ATOLL_MAX_TEMPLATES_PER_ORG", "none")
    flagged = ("--cpu-overcommit", "5", "--max-templates-per-org", "0")
    assert _observe(spare_server(data_dir, *SERVE_ARGS, *flagged, tag="e")) == (cpus * 5, 409)
    monkeypatch.delenv("ATOLL_CPU_OVERCOMMIT")
    monkeypatch.delenv("ATOLL_MAX_TEMPLATES_PER_ORG")
    budget, imported = _observe(spare_server(data_dir, *SERVE_ARGS, tag="e"))
    assert budget == cpus * 128  # the default
    assert imported != 409  # under the default limit the import goes on (and fails: no archive)


def test_bad_env_value_stops_start_up_naming_it(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_CPU_OVERCOMMIT", "many")
    server = spare_server(data_dir, *SERVE_ARGS, tag="e")
    with pytest.raises(RuntimeError, match="exited 2"):  # a usage error, before anything started
        server.start(timeout=60)
    assert "'--cpu-overcommit' / ATOLL_CPU_OVERCOMMIT" in server.log_tail()
