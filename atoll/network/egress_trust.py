"""The sandbox side of TLS termination for transforms: a CA of the sandbox's own (created on the
host, its key never inside) whose certificate joins the sandbox's trust store, and the
environment that points common tools at that store."""

from __future__ import annotations

import logging
from pathlib import Path

from atoll._exceptions import FileFailure
from atoll.network.ca import CertificateAuthority
from atoll.network.policy import EgressPolicy
from atoll.runtime import confined
from atoll.runtime.spec import upper_dir

log = logging.getLogger("atoll.egress")

# the sandbox's CA on the host, under its sandbox directory (its key never enters the sandbox)
CA_DIR = "egress"
# where the sandbox's CA lands inside it (Debian layout; the env vars make it work elsewhere)
GUEST_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
GUEST_CA = "usr/local/share/ca-certificates/atoll-egress.crt"
CA_ENV_BUNDLE = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
)


def sandbox_env(policy: EgressPolicy) -> dict[str, str]:
    """Environment for a sandbox whose policy terminates TLS: every common CA-bundle variable
    points at the trust store that includes the sandbox's CA."""
    if not policy.transforms:
        return {}
    return {**{k: f"/{GUEST_BUNDLE}" for k in CA_ENV_BUNDLE}, "NODE_EXTRA_CA_CERTS": f"/{GUEST_CA}"}


def install_ca(
    policy: EgressPolicy, sandbox_dir: Path, template_rootfs: Path | None, inherited: Path | None = None
) -> None:
    """Before boot: for transforms, create (once) the sandbox's CA on the host and install its
    certificate in the sandbox's trust store (written into the root's upper layer). A sandbox
    restored from a snapshot takes the snapshot's CA (``inherited``) when it permits every
    transform's domain: processes restored from memory trust the CA they loaded."""
    if not policy.transforms:
        return
    domains = [t.domain for t in policy.transforms]
    if inherited is not None and not (sandbox_dir / CA_DIR).exists():
        _inherit(inherited, sandbox_dir / CA_DIR, domains)
    ca = CertificateAuthority.load_or_create(
        sandbox_dir / CA_DIR, f"Atoll egress CA {sandbox_dir.name}", permitted=domains
    )
    pem = ca.cert_pem
    upper = upper_dir(sandbox_dir)
    upper.mkdir(parents=True, exist_ok=True)
    # the upper dir is the sandbox's to change and an imported template's rootfs its author's:
    # resolve links inside them, never on the host (a planted link must not reach host files)
    current = confined.read_in_layer(str(upper), GUEST_BUNDLE)
    if current is not None and pem in current:
        return
    if current is None and template_rootfs is not None:
        current = confined.read_in_layer(str(template_rootfs), GUEST_BUNDLE)
    existing = current or b""
    for path, data in ((GUEST_BUNDLE, existing.rstrip(b"\n") + b"\n" + pem), (GUEST_CA, pem)):
        try:
            confined.replace_in_layer(str(upper), path, data.lstrip(b"\n"))
        except (OSError, FileFailure) as exc:  # the sandbox broke its own trust store: boot anyway
            log.warning("sandbox %s: could not install its egress CA at /%s: %s", sandbox_dir.name, path, exc)


def _inherit(source: Path, target: Path, domains: list[str]) -> None:
    """``source``'s CA copied as ``target`` when it signs for all ``domains`` (else a new one
    is made: a restore may name other transforms than its snapshot did)."""
    try:
        ca = CertificateAuthority.load(source)
    except (OSError, ValueError):  # no CA kept (a snapshot of a sandbox without transforms)
        return
    if all(ca.permits(domain) for domain in domains):
        ca.save(target)


def keep_ca(sandbox_dir: Path, snapshot_dir: Path) -> None:
    """A snapshot keeps its sandbox's CA (when it has one), for the sandboxes restored from it."""
    if (sandbox_dir / CA_DIR).is_dir():
        CertificateAuthority.load(sandbox_dir / CA_DIR).save(snapshot_dir / CA_DIR)
