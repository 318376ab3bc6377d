"""The router's certificate: the operator's (``tls_cert``/``tls_key``), or a wildcard one for
``*.{sandbox_host}`` and the bare host (and the same for the presigned-URL domain when it is
another one) issued by a local CA that ``atoll serve`` makes once.

Everything lives in ``<data_dir>/tls/`` (mode 0700): ``ca.pem`` (public: clients trust it, it is
served at ``GET /v1/ca.pem``), ``ca.key``, ``cert.pem`` and ``key.pem`` (keys 0600). Later starts
reuse them: the CA as long as its name constraint covers the configured domains (so clients
that trust it keep trusting it), the leaf while it is valid for a while more and names them."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from atoll.network.ca import CertificateAuthority

log = logging.getLogger("atoll.router")

CA_NAME = "Atoll local sandbox CA"
LEAF_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)  # a start-up closer than this to expiry issues a new leaf


@dataclass(frozen=True)
class RouterCertificate:
    cert: Path
    key: Path
    ca: Path | None  # None: the operator's certificate (no local CA)


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def ca_path(data_dir: Path) -> Path:
    """Where the local CA's certificate is (or will be once ``atoll serve`` has started)."""
    return tls_dir(data_dir) / "ca.pem"


def leaf_names(hosts: Sequence[str]) -> tuple[str, ...]:
    return tuple(name for host in dict.fromkeys(hosts) for name in (f"*.{host}", host))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Whole or not at all: a crash never leaves a half-written certificate or key behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _local_ca(directory: Path, hosts: Sequence[str]) -> CertificateAuthority:
    if (directory / "ca.pem").exists() and (directory / "ca.key").exists():
        try:
            ca = CertificateAuthority.load(directory)
        except (ValueError, AssertionError) as exc:
            log.warning("router: unreadable local CA in %s (%s); making a new one", directory, exc)
        else:
            if all(ca.permits(host) for host in hosts):
                return ca
            log.warning(
                "router: the local CA does not cover %s; making a new one (clients must trust it)",
                ", ".join(hosts),
            )
    ca = CertificateAuthority.create(CA_NAME, permitted=hosts)
    ca.save(directory)
    return ca


def _leaf_fits(
    cert_file: Path, key_file: Path, ca: CertificateAuthority, hosts: Sequence[str], now: dt.datetime
) -> bool:
    if not (cert_file.exists() and key_file.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        set(names.get_values_for_type(x509.DNSName)) == set(leaf_names(hosts))
        and cert.not_valid_after_utc - now > RENEW_BEFORE
    )


def local_certificate(data_dir: Path, hosts: Sequence[str]) -> RouterCertificate:
    """The local CA and its wildcard certificate for ``hosts``, made or renewed as needed."""
    hosts = list(dict.fromkeys(hosts))
    directory = tls_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca = _local_ca(directory, hosts)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    if not _leaf_fits(cert_file, key_file, ca, hosts, dt.datetime.now(dt.UTC)):
        names = leaf_names(hosts)
        issued = ca.issue(*names, validity=LEAF_VALIDITY)
        _write_atomic(key_file, issued.key_pem, 0o600)
        _write_atomic(cert_file, issued.cert_pem + ca.cert_pem, 0o644)  # the chain, leaf first
        log.info("router: issued a certificate for %s (until %s)", ", ".join(names), issued.not_after.date())
    return RouterCertificate(cert_file, key_file, directory / "ca.pem")


def router_certificate(
    data_dir: Path, hosts: Sequence[str], operator_cert: Path | None, operator_key: Path | None
) -> RouterCertificate:
    """The operator's certificate when given, else the local one for ``hosts`` (the sandbox and
    presigned-URL domains, without ports)."""
    if operator_cert is not None and operator_key is not None:
        return RouterCertificate(operator_cert, operator_key, None)
    return local_certificate(data_dir, hosts)
