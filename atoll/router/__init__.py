"""The sandbox router: ``{id}[-{port}].{domain}`` (or the ``Atoll-Sandbox-Id`` header) to a port
inside a sandbox, for HTTP/1.1, SSE and WebSocket traffic; and presigned URLs.

One small module per concern, composed in ``_server``:

    _names      which sandbox and port a request is for (Host or headers); public URLs
    _lookup     API key / presigned token -> org -> running sandbox -> address (cached)
    _hop        a cluster's replica -> the sandbox's node's router: internal headers, trust
    _presigned  presigned-URL tokens: minting, hashing, storage
    _context    what all client connections of one router share (lookup, names, timeouts)
    _request    request heads read (llhttp) and rewritten for the sandbox; body pieces
    _proxy      one client connection: send requests (queued or at once), relay responses
    _framing    where each response ends in the relayed byte stream
    _upstream   the connection to the sandbox port (fast 502 when nothing listens)
    _responses  the router's own JSON errors
    _listener   accepting: HTTPS and plain HTTP on one port (the first byte tells them apart)
    _certs      the router's certificate: the operator's, or a local CA's wildcard one
    _server     listeners, TLS, start/stop
"""

from __future__ import annotations

from atoll.router._certs import RouterCertificate, ca_path, router_certificate
from atoll.router._lookup import (
    Destination,
    Grants,
    Lookup,
    NodeHome,
    SandboxAddress,
    SandboxHomes,
    SandboxLifecycle,
    SandboxLookup,
    SandboxRecord,
    SandboxRecords,
    ServicePort,
)
from atoll.router._names import Names, SandboxTarget, Target, TokenTarget, TrustedTarget, public_url
from atoll.router._presigned import DEFAULT_EXPIRES_IN, Grant, PresignedStore
from atoll.router._server import Router, RouterSettings, build_router, tls_context

__all__ = [
    "DEFAULT_EXPIRES_IN",
    "Destination",
    "Grant",
    "Grants",
    "Lookup",
    "Names",
    "NodeHome",
    "PresignedStore",
    "Router",
    "RouterCertificate",
    "RouterSettings",
    "SandboxAddress",
    "SandboxHomes",
    "SandboxLifecycle",
    "SandboxLookup",
    "SandboxRecord",
    "SandboxRecords",
    "SandboxTarget",
    "ServicePort",
    "Target",
    "TokenTarget",
    "TrustedTarget",
    "build_router",
    "ca_path",
    "public_url",
    "router_certificate",
    "tls_context",
]
