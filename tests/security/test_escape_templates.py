"""Template imports as a way into the server's own network (SSRF): a tenant names a registry on
the server's loopback or on a private address, hoping the server connects there. Each target is
a listener this test opens on a local address, so a connection that gets through is seen here
and goes nowhere else."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll._exceptions import ImageRejected
from atoll.network.ca import CertificateAuthority
from atoll.network.firewall import service_address
from atoll.templates.import_guard import ImportGuard
from atoll.templates.oci import _unroutable, check_source
from tests._support.server import SUBNET, spare_server
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
    except ImageRejected as exc:
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


class RedirectingRegistry:
    """A registry-like HTTPS server on 127.0.0.2: its API root answers as a registry does, and
    every other request is redirected to ``target`` (a place the server must never reach)."""

    def __init__(self, workdir: Path, target: str) -> None:
        ca = CertificateAuthority.create("Atoll redirect test CA")
        leaf = ca.issue("127.0.0.2")
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_bytes(ca.cert_pem)
        (workdir / "leaf.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                self.send_response(307)
                self.send_header("Location", f"{target}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "leaf.pem")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.mark.attempt("import from an allowed registry that redirects to the server's loopback")
def test_registry_redirect_to_loopback(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, blocked: Blocked
) -> None:
    """The operator allows a registry (on loopback here, so that nothing leaves the machine);
    it answers the API root, then redirects the manifest to 127.0.0.1:PORT. skopeo would follow
    it; under the import guard it can reach nothing but the guard's proxy and forwarders."""
    workdir = Path(tempfile.mkdtemp(prefix="atoll-test-redirect-", dir="/var/tmp"))
    registry = RedirectingRegistry(workdir, f"https://127.0.0.1:{listener.port}")
    monkeypatch.setenv("SSL_CERT_FILE", str(registry.ca_file))  # skopeo trusts the test's CA
    server = spare_server(workdir / "data", "--template-registry", f"127.0.0.2:{registry.port}", tag="r")
    try:
        server.start()
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
            for uri in (f"docker://127.0.0.2:{registry.port}/x:latest", f"127.0.0.2:{registry.port}/y/z:1"):
                r = http.post("/v1/template", json={"name": "redirected", "uri": uri})
                assert r.status_code == 400, r.text
            assert [t["name"] for t in http.get("/v1/templates").json()["items"] if not t["is_system"]] == []
        # the registry was reached (the guard forwards the operator's own loopback registry) and
        # it did send its redirects; none of them arrived
        assert "/v2/" in registry.paths and any("/manifests/" in p for p in registry.paths), registry.paths
        assert listener.peers == []
        blocked("skopeo runs in an empty network namespace: only the guard's checking proxy leads out")
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.delete_everything()
            server.stop()
        registry.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.attempt("a registry name that resolves to a public address, then to loopback (DNS rebinding)")
def test_rebinding_name_checked_on_connect(listener: Listener, blocked: Blocked) -> None:
    """The guard resolves each name itself when the connection is made, and connects to the
    address it checked: a name that turned to 127.0.0.1 since ``check_source`` is refused."""
    answers = {"rebind.example": ["127.0.0.1"], "listed.example": ["127.0.0.2"]}

    async def resolve(name: str) -> list[str]:
        return answers.get(name, [])

    async def attempt(host: str) -> tuple[int, list[str], str]:
        async with ImportGuard(allowed=("listed.example",), refuse=_unroutable, resolve=resolve) as guard:
            url = f"https://{host}:{listener.port}/v2/"
            argv, env, fds = guard.wrap(["curl", "-sS", "-o", "/dev/null", "--max-time", "10", url])
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, pass_fds=fds, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
            )
            _, err = await proc.communicate()
            return proc.returncode or 0, list(guard.refused), err.decode()

    rc, refused, err = asyncio.run(attempt("rebind.example"))
    assert rc != 0 and "403" in err, err
    assert refused == [f"rebind.example:{listener.port} (127.0.0.1)"], refused
    assert listener.peers == []
    # the same path to a name the operator listed does lead through (the listener, which
    # speaks no TLS, then sees the tunnel's connection): the check above is not vacuous
    rc, refused, err = asyncio.run(attempt("listed.example"))
    assert refused == [] and "403" not in err, err
    deadline = time.monotonic() + 5
    while not listener.peers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.peers, err
    blocked("the guard's proxy resolves on connect and refuses loopback, private and link-local addresses")
