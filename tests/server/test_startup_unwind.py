"""A start-up that fails half-way undoes what it had started (issue 17: the lifespan is one
``AsyncExitStack``): a real server whose sandbox router cannot listen (its port is taken) fails
late, after the store, the egress resolver and proxy, the host firewall table and the network
pool are up, and must leave none of them behind."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from atoll.network.firewall import service_address, table_name
from tests._support.leaks import host_view
from tests._support.server import side_server

pytestmark = [pytest.mark.privileged]


def _on_loopback(address: str) -> bool:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    return f" {address}/" in out.stdout


def _has_table(instance: str) -> bool:
    listed = subprocess.run(["nft", "list", "table", "inet", table_name(instance)], capture_output=True)
    return listed.returncode == 0


def test_a_start_up_failing_late_leaves_nothing_running() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-unwind-", dir="/var/tmp"))
    server = side_server(data_dir, "unw", 5)
    try:
        with socket.socket() as taken:  # the router's port: its listen, late in the start-up, fails
            taken.bind(("127.0.0.1", server.router_port))
            taken.listen()
            with pytest.raises(RuntimeError, match="exited"):
                server.start(timeout=120)
        log = server.log_path.read_text(errors="replace")
        assert "sandbox router cannot listen" in log, log[-3000:]
        # what the start-up had made before the router: all undone, in reverse
        assert not _has_table(server.instance), "the host firewall table outlived a failed start-up"
        assert not _on_loopback(service_address(server.subnet)), "the egress service address stayed"
        view = host_view(data_dir, instance=server.instance, iface_prefix=server.iface_prefix)
        assert not view.netns and not view.veths, (view.netns, view.veths)
        assert not view.mounts and not view.cgroups and not view.containers
        assert not Path(f"/run/atoll/{server.instance}").exists(), "the run directory stayed"
        # and the same server starts once the port is free (nothing half-made is in its way)
        server.start()
        server.stop()
        assert not _has_table(server.instance)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
