"""The router's local CA and wildcard certificate (``atoll.router._certs``): made once with
private modes, reused, renewed when near expiry or for another domain, and the operator's
certificate used as given."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509

from atoll.network.ca import CertificateAuthority
from atoll.router import router_certificate
from atoll.router._certs import RENEW_BEFORE


def names(cert: Path) -> set[str]:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def test_made_once_private_and_reused(tmp_path: Path) -> None:
    first = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    assert first.ca == tmp_path / "tls" / "ca.pem"
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert first.key.stat().st_mode & 0o777 == 0o600
    assert names(first.cert) == {"*.sbx.localhost", "sbx.localhost"}
    files = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    again = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    assert again == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == files
    # Python's ssl accepts it for a sandbox name under a *.localhost domain
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(first.cert, first.key)
    client = ssl.create_default_context(cafile=str(first.ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(incoming, outgoing, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_hostname="sbxabc-8080.sbx.localhost")
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        incoming.write(c_out.read())
        c_in.write(outgoing.read())
    assert c.version() and s.version()


def test_renewed_near_expiry_and_for_another_domain(tmp_path: Path) -> None:
    made = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    ca_pem = made.ca.read_bytes() if made.ca else b""
    ca = CertificateAuthority.load(tmp_path / "tls")
    short = ca.issue("*.sbx.localhost", "sbx.localhost", validity=RENEW_BEFORE - dt.timedelta(days=1))
    made.cert.write_bytes(short.cert_pem)
    made.key.write_bytes(short.key_pem)
    renewed = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    leaf = x509.load_pem_x509_certificate(renewed.cert.read_bytes())
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert renewed.ca and renewed.ca.read_bytes() == ca_pem  # the CA clients trust stays
    # another domain: a new leaf, and a new CA (the old one is constrained to the old domain)
    moved = router_certificate(tmp_path, ["sbx.example.org"], None, None)
    assert names(moved.cert) == {"*.sbx.example.org", "sbx.example.org"}
    assert moved.ca and moved.ca.read_bytes() != ca_pem
    # a subdomain of the CA's domain keeps the CA
    sub = router_certificate(tmp_path, ["eu.sbx.example.org"], None, None)
    assert sub.ca and sub.ca.read_bytes() == moved.ca.read_bytes()
    assert names(sub.cert) == {"*.eu.sbx.example.org", "eu.sbx.example.org"}


def test_a_damaged_certificate_is_replaced(tmp_path: Path) -> None:
    made = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    made.cert.write_bytes(b"not a certificate")
    again = router_certificate(tmp_path, ["sbx.localhost"], None, None)
    assert names(again.cert) == {"*.sbx.localhost", "sbx.localhost"}


def test_the_operators_certificate_is_used_as_given(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    given = router_certificate(tmp_path / "data", ["sbx.localhost"], cert, key)
    assert (given.cert, given.key, given.ca) == (cert, key, None)
    assert not (tmp_path / "data").exists()


def test_a_separate_presigned_domain_is_covered_too(tmp_path: Path) -> None:
    made = router_certificate(tmp_path, ["sbx.localhost", "share.localhost", "sbx.localhost"], None, None)
    assert names(made.cert) == {"*.sbx.localhost", "sbx.localhost", "*.share.localhost", "share.localhost"}
    assert made.ca is not None
    ca = CertificateAuthority.load(tmp_path / "tls")
    assert ca.permits("x.share.localhost") and ca.permits("sbx.localhost") and not ca.permits("example.com")
