"""Certificate authorities for TLS-terminating transforms and for the sandbox router
(``cryptography``, ECDSA P-256).

Each sandbox with transforms gets its own CA. Its certificate goes into the sandbox's trust
store; its key never leaves the host (``<sandbox dir>/egress/``, mode 0600). The CA carries a
name constraint for the transform domains only, so even a client that trusts it trusts it for
nothing else. Leaf certificates are issued on demand per TLS server name.

The router's local CA (``atoll.router._certs``) is one of these too, constrained to the sandbox
domain, issuing one long-lived wildcard certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=7)
BACKDATE = dt.timedelta(hours=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atoll"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _constraint_base(domain: str) -> str:
    return domain[2:] if domain.startswith("*.") else domain


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


class CertificateAuthority:
    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())

    @classmethod
    def create(cls, common_name: str, *, permitted: Iterable[str] = ()) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        domains = sorted({_constraint_base(d) for d in permitted})
        if domains:
            builder = builder.add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[x509.DNSName(d) for d in domains], excluded_subtrees=None
                ),
                critical=False,
            )
        return cls(builder.sign(key, hashes.SHA256()), key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(cert, key)

    @classmethod
    def load_or_create(
        cls, directory: Path, common_name: str, *, permitted: Iterable[str] = ()
    ) -> CertificateAuthority:
        if (directory / "ca.pem").exists() and (directory / "ca.key").exists():
            return cls.load(directory)
        ca = cls.create(common_name, permitted=permitted)
        ca.save(directory)
        return ca

    def save(self, directory: Path) -> None:
        _write_private(directory / "ca.key", _pem_key(self.key))
        (directory / "ca.pem").write_bytes(self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def permits(self, name: str) -> bool:
        """Whether this CA's name constraints (if any) allow certificates for DNS ``name``."""
        try:
            constraints = self.cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            return True
        base = _constraint_base(name)
        permitted = [s.value for s in constraints.permitted_subtrees or () if isinstance(s, x509.DNSName)]
        return any(base == domain or base.endswith(f".{domain}") for domain in permitted)

    def issue(self, *names: str, validity: dt.timedelta = LEAF_VALIDITY) -> Issued:
        """A server certificate for ``names`` (DNS names or IP addresses)."""
        now = _now()
        not_after = now + validity
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(self._leaf_key), not_after)
