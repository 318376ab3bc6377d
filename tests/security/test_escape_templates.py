"""Template imports as a way into the server's own network (SSRF): a tenant names a registry on
the server's loopback or on a private address, hoping the server connects there. Each target is
a listener this test opens on a local address, so a connection that gets through is seen here
and goes nowhere else."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll._exceptions import BadRequestError
from atoll.network.firewall import service_address
from atoll.templates.oci import check_source
from tests._support.server import SUBNET
from tests.security.conftest import Blocked

pytestmark = [pytest.mark.privileged]


class Listener:
    """A TCP listener on every local address that records each connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            self.peers.append(peer[0])
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.close()


@pytest.mark.attempt("import a template from the server's own loopback or a private address (SSRF)")
@pytest.mark.parametrize("where", ["127.0.0.1", "localhost", "private"])
def test_import_from_a_local_registry(
    http: httpx.Client, listener: Listener, where: str, blocked: Blocked
) -> None:
    # the server's service address is a private (10.x) address on this host's loopback
    host = service_address(SUBNET) if where == "private" else where
    for uri in (f"docker://{host}:{listener.port}/x", f"{host}:{listener.port}/library/x:latest"):
        r = http.post("/v1/template", json={"name": f"ssrf-{where}", "uri": uri})
        assert r.status_code == 400, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["uri"], r.text
        streamed = http.post(
            "/v1/template",
            json={"name": f"ssrf-{where}", "uri": uri},
            headers={"accept": "application/x-ndjson"},
        )
        assert streamed.status_code == 400, streamed.text
    assert listener.peers == []
    names = [t["name"] for t in http.get("/v1/templates").json()["items"]]
    assert f"ssrf-{where}" not in names, names
    blocked("400 naming uri before any connection: registry hosts must resolve to public addresses")


def refused(uri: str, registries: tuple[str, ...] = ()) -> str | None:
    try:
        asyncio.run(check_source(uri, [Path("/nonexistent")], registries))
    except BadRequestError as exc:
        assert exc.errors and exc.errors[0]["field"] == "uri"
        return exc.message
    return None


def test_registry_allow_list() -> None:
    """Only literal addresses here (no DNS): the operator's list decides which registries an
    import may name, and a registry it lists may be on a private address."""
    listed = ("10.1.2.3:5000", "198.51.100.7")
    assert refused("docker://10.1.2.3:5000/app:1", listed) is None  # the operator's own registry
    assert refused("docker://198.51.100.7/app", listed) is None
    assert "not one this server imports from" in (refused("docker://10.9.9.9:5000/app", listed) or "")
    assert "not one this server imports from" in (refused("busybox:latest", listed) or "")  # docker.io
    assert "not one this server imports from" in (refused("docker://8.8.8.8/app", listed) or "")
    for uri in ("docker://169.254.169.254/x", "docker://100.64.0.1/x", "docker://0x7f.1/x", "[::1]:5000/x"):
        assert refused(uri) is not None, uri
    assert refused("oci:/nonexistent/x", listed) is not None  # local sources: their own rules
