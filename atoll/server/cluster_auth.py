"""The cluster's own calls between its processes (a snapshot's files copied node to node): they
carry the shared ``Settings.cluster_token`` in one header, checked here in constant time. A
process without a token takes no such call, and tells nobody that the internal paths exist."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from atoll._exceptions import NotFoundError

TOKEN_HEADER = "x-atoll-cluster-token"


def token_matches(connection: HTTPConnection, expected: str | None) -> bool:
    given = connection.headers.get(TOKEN_HEADER)
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def require_cluster_token(connection: HTTPConnection, expected: str | None) -> None:
    """404, as for any unknown path, unless the call carries the cluster's token."""
    if not token_matches(connection, expected):
        raise NotFoundError("not found")
