"""TLS for sandbox URLs against the real server: the local CA and its wildcard certificate,
HTTPS and plain HTTP on the router's one port (IPv4 and IPv6), WebSocket over TLS, a silent
client closed after the bounded wait, the unchanged leap0 SDK over ``https://``, and an
operator's certificate winning over the local CA."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.sync.client import connect as ws_connect

from atoll.network.ca import CertificateAuthority
from atoll.router._server import FIRST_BYTE_TIMEOUT_S
from tests._support import api
from tests._support.server import SANDBOX_DOMAIN, ServerProcess, serving, spare_server
from tests.router.conftest import wait_listening

pytestmark = pytest.mark.privileged

LEAP0_PYTHON = Path(__file__).resolve().parents[2] / ".venv-leap0" / "bin" / "python"
LEAP0_SCRIPT = Path(__file__).with_name("leap0_tls_client.py")


def ca_file(server: ServerProcess) -> Path:
    return server.data_dir / "tls" / "ca.pem"


@pytest.fixture
def trusting(server: ServerProcess) -> ssl.SSLContext:
    """A client context that trusts the server's local CA and nothing else."""
    return ssl.create_default_context(cafile=str(ca_file(server)))


def url(
    server: ServerProcess, sandbox_id: str, path: str, *, scheme: str = "https", port: int | None = None
) -> str:
    label = sandbox_id if port is None else f"{sandbox_id}-{port}"
    return f"{scheme}://{label}.{SANDBOX_DOMAIN}:{server.router_port}{path}"


def test_local_ca_is_made_kept_private_and_served(server: ServerProcess, http: httpx.Client) -> None:
    directory = server.data_dir / "tls"
    assert directory.stat().st_mode & 0o777 == 0o700
    for key in ("ca.key", "key.pem"):
        assert (directory / key).stat().st_mode & 0o777 == 0o600, key
    # no key: the CA is public; a cluster's node serves its own router's (docs/cluster.md)
    r = httpx.get(f"{server.own_url}/v1/ca.pem", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-pem-file"
    assert r.content == ca_file(server).read_bytes()
    assert b"PRIVATE" not in r.content
    ca = x509.load_pem_x509_certificate(r.content)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {f"*.{SANDBOX_DOMAIN}", SANDBOX_DOMAIN}
    assert httpx.get(f"{server.own_url}/v1/health", timeout=10).json()["sandbox_url"] == {
        "scheme": "https",
        "domain": f"{SANDBOX_DOMAIN}:{server.router_port}",
        "ca": "/v1/ca.pem",
    }


def test_https_and_plain_http_on_one_port(
    server: ServerProcess, app_sandbox: str, trusting: ssl.SSLContext
) -> None:
    with httpx.Client(verify=trusting, trust_env=False, headers=server.headers, timeout=30) as client:
        r = client.get(url(server, app_sandbox, "/echo"))
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["x-forwarded-proto"] == "https"
        r = client.get(url(server, app_sandbox, "/hello", port=8080))
        assert (r.status_code, r.text) == (200, "hello from 8080")
        # keep-alive: more requests on the same TLS connection
        for _ in range(3):
            assert client.get(url(server, app_sandbox, "/hello")).status_code == 200
        r = client.get(url(server, app_sandbox, "/echo", scheme="http"))
        assert r.status_code == 200 and r.json()["headers"]["x-forwarded-proto"] == "http"
        # both address families the router listens on, each way (the name is only SNI and Host)
        for address in ("127.0.0.1", "[::1]"):
            for scheme in ("https", "http"):
                r = client.get(
                    f"{scheme}://{address}:{server.router_port}/hello",
                    headers={"host": server.sandbox_host(app_sandbox)},
                    extensions={"sni_hostname": f"{app_sandbox}.{SANDBOX_DOMAIN}"},
                )
                assert (r.status_code, r.text) == (200, "hello from 8080"), (address, scheme)
    # the certificate really is checked: not trusted by the public CAs, nor valid for another name
    with httpx.Client(trust_env=False, timeout=30) as untrusting:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.get(url(server, app_sandbox, "/hello"))
    with socket.create_connection(("127.0.0.1", server.router_port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            trusting.wrap_socket(raw, server_hostname="example.com")


def test_websocket_over_tls(server: ServerProcess, app_sandbox: str, trusting: ssl.SSLContext) -> None:
    with ws_connect(
        url(server, app_sandbox, "/ws", scheme="wss"),
        ssl=trusting,
        additional_headers=server.headers,
        proxy=None,
        open_timeout=30,
    ) as ws:
        ws.send("over tls")
        assert ws.recv(timeout=10) == "over tls"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"


def test_silent_client_is_closed_after_the_bounded_wait(
    server: ServerProcess, app_sandbox: str, trusting: ssl.SSLContext
) -> None:
    silent = [socket.create_connection((host, server.router_port)) for host in ("127.0.0.1", "::1")]
    started = time.monotonic()
    try:
        # meanwhile everyone else is served
        with httpx.Client(verify=trusting, trust_env=False, headers=server.headers, timeout=30) as client:
            assert client.get(url(server, app_sandbox, "/hello")).status_code == 200
        for sock in silent:
            sock.settimeout(FIRST_BYTE_TIMEOUT_S + 10)
            assert sock.recv(1) == b""  # closed by the router
        elapsed = time.monotonic() - started
        assert FIRST_BYTE_TIMEOUT_S - 1 <= elapsed <= FIRST_BYTE_TIMEOUT_S + 5, elapsed
    finally:
        for sock in silent:
            sock.close()


def test_unchanged_leap0_sdk_reaches_a_sandbox_over_https(
    server: ServerProcess, http: httpx.Client, no_leaks: None
) -> None:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    sandbox = api.create(http, memory=512)["id"]
    try:
        # python3 -m http.server serves /healthz as the code interpreter would answer it
        api.run(
            http,
            sandbox,
            'mkdir -p /tmp/www && printf \'{"status":"ok"}\' > /tmp/www/healthz && cd /tmp/www && '
            "nohup python3 -m http.server 8080 >/tmp/www.log 2>&1 &",
        )
        wait_listening(http, sandbox, 8080)
        env = {**os.environ, "SSL_CERT_FILE": str(ca_file(server))}
        done = subprocess.run(
            [str(LEAP0_PYTHON), str(LEAP0_SCRIPT), server.base_url, server.api_key,
             f"{SANDBOX_DOMAIN}:{server.router_port}", sandbox],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout)
        assert seen == {
            "health": True,
            "invoke_url": f"https://{sandbox}-8080.{SANDBOX_DOMAIN}:{server.router_port}/healthz",
            "status": 200,
            "body": '{"status":"ok"}',
        }
        # without the CA the same SDK refuses the certificate
        env.pop("SSL_CERT_FILE")
        done = subprocess.run(
            [str(LEAP0_PYTHON), str(LEAP0_SCRIPT), server.base_url, server.api_key,
             f"{SANDBOX_DOMAIN}:{server.router_port}", sandbox],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr[-3000:]
    finally:
        api.delete(http, sandbox)


@pytest.fixture
def operator_served(tmp_path: Path) -> Iterator[tuple[ServerProcess, bytes, Path]]:
    """A spare server given an operator's certificate (from a CA minted here)."""
    ca = CertificateAuthority.create("Operator test CA")
    issued = ca.issue(f"*.{SANDBOX_DOMAIN}", SANDBOX_DOMAIN)
    cert, key, ca_pem = tmp_path / "op-cert.pem", tmp_path / "op-key.pem", tmp_path / "op-ca.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    ca_pem.write_bytes(ca.cert_pem)
    spare = spare_server(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key), tag="t")
    with serving(spare):
        yield (
            spare,
            x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(serialization.Encoding.DER),
            ca_pem,
        )


def test_operator_certificate_wins(operator_served: tuple[ServerProcess, bytes, Path]) -> None:
    spare, der, ca_pem = operator_served
    context = ssl.create_default_context(cafile=str(ca_pem))
    with socket.create_connection(("127.0.0.1", spare.router_port)) as raw:
        with context.wrap_socket(raw, server_hostname=f"sbxany.{SANDBOX_DOMAIN}") as tls:
            assert tls.getpeercert(binary_form=True) == der
    assert not (spare.data_dir / "tls").exists()  # no local CA made
    r = httpx.get(f"{spare.base_url}/v1/ca.pem", timeout=10)
    assert r.status_code == 404 and "operator" in r.json()["message"]
    health = httpx.get(f"{spare.base_url}/v1/health", timeout=10).json()
    assert health["sandbox_url"]["scheme"] == "https" and health["sandbox_url"]["ca"] is None
