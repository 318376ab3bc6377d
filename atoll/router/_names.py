"""Which sandbox a request is for, read from its ``Host`` or routing headers; and the public
URLs the server hands out. Pure functions, no I/O.

    {id}.{domain}            the template's PORT          (invoke_url without a port)
    {id}-{port}.{domain}     that port                    (sandbox ids contain no dash)
    {token}.{domain}         a presigned URL (tokens start with ``TOKEN_PREFIX``), or any
    {token}.{presigned}      label under a separate presigned domain when one is configured
    any host + ``Atoll-Sandbox-Id: {id}`` [+ ``Atoll-Sandbox-Port: {port}``]   header routing

A request an API replica forwards to a node's router names its sandbox, port and organisation in
internal headers instead (``_hop``): a ``TrustedTarget``, made only once the cluster's token
matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from atoll._exceptions import BadRequestError, NotFoundError

TOKEN_PREFIX = "atp"
ID_HEADER = b"atoll-sandbox-id"
PORT_HEADER = b"atoll-sandbox-port"
_ID = re.compile(rb"^[a-z0-9_]{1,64}$")
_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class SandboxTarget:
    sandbox_id: str
    port: int | None  # None: the template's PORT


@dataclass(frozen=True, slots=True)
class TokenTarget:
    token: str


@dataclass(frozen=True, slots=True)
class TrustedTarget:
    """A sandbox port whose organisation another router of the cluster already checked (``_hop``)."""

    sandbox_id: str
    port: int | None  # None: the template's PORT
    org_id: str
    # a presigned URL's token (a credential: not in the repr): this router checks the grant itself
    presigned: str | None = field(default=None, repr=False)


Target = SandboxTarget | TokenTarget | TrustedTarget


def valid_id(raw: bytes) -> bool:
    return _ID.match(raw) is not None


def parse_port(raw: bytes) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise BadRequestError(f"invalid sandbox port {raw.decode(errors='replace')!r}: use 1-65535")
    return int(raw)


def _strip_port(host: bytes) -> bytes:
    if host.startswith(b"["):  # [v6]:port
        return host[: host.find(b"]") + 1]
    return host.rpartition(b":")[0] if b":" in host else host


class Names:
    """Parses routing information for one sandbox domain (and an optional presigned domain)."""

    def __init__(self, sandbox_domain: str, presigned_domain: str | None = None) -> None:
        self.sandbox_domain = sandbox_domain.lower().strip(".")
        self.presigned_domain = (presigned_domain or self.sandbox_domain).lower().strip(".")
        self._suffix = b"." + self.sandbox_domain.encode()
        self._presigned_suffix = b"." + self.presigned_domain.encode()
        self._hosts: dict[bytes, Target] = {}  # Host header -> target, for the fast path

    def target(
        self, host: bytes | None, sandbox_id: bytes | None = None, port: bytes | None = None
    ) -> Target:
        """The target of one request; ``BadRequestError`` / ``NotFoundError`` when there is none."""
        if sandbox_id is None and port is None and host is not None:
            known = self._hosts.get(host)
            if known is None:
                known = self._parse(host, None, None)
                if len(self._hosts) >= _CACHE_MAX:
                    self._hosts.clear()
                self._hosts[host] = known
            return known
        return self._parse(host, sandbox_id, port)

    def _parse(self, host: bytes | None, sandbox_id: bytes | None, port: bytes | None) -> Target:
        if sandbox_id is not None:
            sandbox_id = sandbox_id.strip().lower()
            if not _ID.match(sandbox_id):
                raise BadRequestError("invalid Atoll-Sandbox-Id header")
            return SandboxTarget(sandbox_id.decode(), parse_port(port.strip()) if port is not None else None)
        name = _strip_port(host.strip().lower()).rstrip(b".") if host else b""
        if name.endswith(self._presigned_suffix) and self._presigned_suffix != self._suffix:
            label = name[: -len(self._presigned_suffix)]
            if label and b"." not in label:
                return TokenTarget(label.decode(errors="replace"))
        elif name.endswith(self._suffix):
            label = name[: -len(self._suffix)]
            if label.startswith(TOKEN_PREFIX.encode()) and b"." not in label:
                return TokenTarget(label.decode(errors="replace"))
            sid, dash, explicit = label.partition(b"-")
            if _ID.match(sid):
                if dash:
                    return SandboxTarget(sid.decode(), parse_port(explicit))
                return SandboxTarget(sid.decode(), parse_port(port.strip()) if port is not None else None)
        shown = (host or b"").decode(errors="replace")[:200]
        raise NotFoundError(
            f"no sandbox in host {shown!r}: use {{id}}[-{{port}}].{self.sandbox_domain} "
            "or the Atoll-Sandbox-Id header"
        )


def public_url(scheme: str, label: str, domain: str, port: int, path: str = "/") -> str:
    """``{scheme}://{label}.{domain}[:{port}]{path}``; the port is left out when it is the scheme's."""
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = f"{label}.{domain}" if port == default else f"{label}.{domain}:{port}"
    return f"{scheme}://{netloc}{path}"
