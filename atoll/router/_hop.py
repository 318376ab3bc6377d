"""The hop from an API replica's router to the router of the node that runs the sandbox
(docs/cluster.md, "Sandbox URLs through a replica").

The replica authenticates the client (API key or presigned token), checks that the sandbox is the
organisation's, and sends the request on to the node's router with the sandbox, its port and
the organisation asserted in the internal headers below, plus the cluster's shared token. The
node's router routes such a request by those headers, without a key, only when the token matches
(constant-time comparison); headers with a wrong or missing token are refused (401) and nothing
is forwarded. Every router strips these headers, so no client can pass them through a replica,
and no sandbox ever sees them (nor the token). A presigned URL's token goes along too: the node
checks the grant itself, so a presigned URL deleted (on its sandbox's node) stops working at
once through every replica. Pure functions, no I/O."""

from __future__ import annotations

import hmac
import re
from typing import NamedTuple
from urllib.parse import quote, unquote

from atoll._exceptions import AuthenticationError, BadRequestError
from atoll.router._names import TrustedTarget, parse_port, valid_id

# the same header the cluster's API calls carry the token in (atoll.server.cluster_auth)
TOKEN_HEADER = b"x-atoll-cluster-token"
SANDBOX_HEADER = b"x-atoll-hop-sandbox"
PORT_HEADER = b"x-atoll-hop-port"  # absent: the template's PORT (the node knows its templates)
ORG_HEADER = b"x-atoll-hop-org"  # percent-encoded: an organisation id is any text
PRESIGNED_HEADER = b"x-atoll-hop-presigned"  # the presigned URL's token, when one was used
HOP_HEADERS = frozenset((TOKEN_HEADER, SANDBOX_HEADER, PORT_HEADER, ORG_HEADER, PRESIGNED_HEADER))
ORG_ID_MAX = 64
_PRESIGNED = re.compile(rb"^[a-z0-9]{1,128}$")


class Hop(NamedTuple):
    """What a replica asserts to the node's router for one sandbox port (never the token: a
    ``Destination`` that holds this may be logged)."""

    node_id: str
    org_id: str
    sandbox_port: int | None  # None: the template's PORT
    presigned: str | None = None  # the presigned URL's token (a credential: never in the repr)

    def __repr__(self) -> str:
        shown = "" if self.presigned is None else ", presigned=..."
        return f"Hop({self.node_id!r}, {self.org_id!r}, {self.sandbox_port!r}{shown})"


def hop_headers(hop: Hop, sandbox_id: str, token: str) -> bytes:
    """The header lines (each ending in CRLF) a replica adds to a request head for ``hop``."""
    lines = [
        b"X-Atoll-Cluster-Token: " + token.encode() + b"\r\n",
        b"X-Atoll-Hop-Sandbox: " + sandbox_id.encode() + b"\r\n",
        b"X-Atoll-Hop-Org: " + quote(hop.org_id, safe="").encode() + b"\r\n",
    ]
    if hop.sandbox_port is not None:
        lines.append(b"X-Atoll-Hop-Port: %d\r\n" % hop.sandbox_port)
    if hop.presigned is not None:
        lines.append(b"X-Atoll-Hop-Presigned: " + hop.presigned.encode() + b"\r\n")
    return b"".join(lines)


def with_hop(head: bytes, hop: Hop, sandbox_id: str, token: str) -> bytes:
    """A rewritten request head (ending in an empty line) with the hop's headers added."""
    return head[:-2] + hop_headers(hop, sandbox_id, token) + b"\r\n"


def trusted_target(
    expected_token: bytes | None,
    *,
    token: bytes | None,
    sandbox_id: bytes | None,
    org_id: bytes | None,
    port: bytes | None,
    presigned: bytes | None = None,
) -> TrustedTarget:
    """The target a request with hop headers asserts, if its token is the cluster's.

    ``AuthenticationError`` (401) when this router has no cluster token, or the request's token
    is missing or wrong: whoever sent it is not a router of this cluster. ``BadRequestError``
    when a router of the cluster sent headers that do not name a sandbox and an organisation."""
    if not expected_token or token is None or not hmac.compare_digest(token.strip(), expected_token):
        raise AuthenticationError("internal routing headers without the cluster's token")
    if sandbox_id is None or org_id is None:
        raise BadRequestError("internal routing headers name no sandbox or no organisation")
    sandbox_id = sandbox_id.strip()
    if not valid_id(sandbox_id):
        raise BadRequestError("invalid internal sandbox header")
    try:
        org = unquote(org_id.strip().decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise BadRequestError("invalid internal organisation header") from None
    if not 0 < len(org) <= ORG_ID_MAX:
        raise BadRequestError("invalid internal organisation header")
    if presigned is not None and not _PRESIGNED.match(presigned.strip()):
        raise BadRequestError("invalid internal presigned header")
    return TrustedTarget(
        sandbox_id.decode(),
        parse_port(port.strip()) if port is not None else None,
        org,
        presigned.strip().decode() if presigned is not None else None,
    )
