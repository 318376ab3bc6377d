"""A clean stop with no sandbox left leaves nothing of the instance on the host (issue 15, finding
10): no nftables table, no cgroup directories, no ``/run/atoll/<instance>``. With a sandbox left
(they outlive the server by design) what it needs stays, and the next server adopts it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests._support import api
from tests._support.server import spare_server

pytestmark = [pytest.mark.privileged]
SERVE_ARGS = ("--no-build-template",)  # make test builds it first; never rebuilt under other servers
CGROUP_ROOT = Path("/sys/fs/cgroup")


def litter(instance: str) -> list[str]:
    found: list[str] = []
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    found += [line for line in tables.splitlines() if line.split()[-1:] == [f"atoll_{instance}"]]
    found += [str(p) for p in CGROUP_ROOT.glob(f"*/atoll_{instance}")]
    found += [str(p) for p in CGROUP_ROOT.glob(f"atoll_{instance}")]
    run_dir = Path("/run/atoll") / instance
    if run_dir.exists():
        found.append(str(run_dir))
    return found


def test_clean_stop_with_no_sandbox_leaves_nothing() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-stop-", dir="/var/tmp"))
    server = spare_server(data_dir, *SERVE_ARGS, tag="c")
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http:
            kept = api.create(http)["id"]
            gone = api.create(http)["id"]
            api.delete(http, gone)
            assert litter(server.instance), "a running server has its table, cgroups and run dir"
            # a sandbox left running: the server stops, the sandbox and what it needs stay
            server.stop()
            assert server.proc is not None and server.proc.returncode == 0, server.log_tail()
            assert any("atoll_" in item and "table" in item for item in litter(server.instance))
            server.start()
            assert api.run(http, kept, "echo ok")["stdout"] == "ok\n"
            api.delete(http, kept)
        server.stop()
        assert server.proc is not None and server.proc.returncode == 0, server.log_tail()
        assert litter(server.instance) == []
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.delete_everything()
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
