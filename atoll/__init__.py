"""Atoll: self-hosted sandboxes for AI agents.

This namespace is the SDK's public API; everything else lives in private modules. Importing it
stays cheap: it pulls in httpx and the SDK, never the server side (fastapi, sqlalchemy, ...).

    from atoll import Client

    with Client() as client, client.sandboxes.create() as sandbox:
        print(sandbox.process.execute(command="uname -a").stdout)
"""

from __future__ import annotations

from atoll._exceptions import (
    APIError,
    AtollError,
    AtollTimeoutError,
    AuthenticationError,
    BadRequestError,
    CapacityError,
    ConflictError,
    InvalidArgument,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from atoll.sdk import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_TEMPLATE_NAME,
    DEFAULT_TIMEOUT_MIN,
    DEFAULT_VCPU,
    SDK_VERSION,
    AsyncClient,
    AsyncSandbox,
    AsyncSandboxesClient,
    AsyncSnapshotsClient,
    AsyncTransport,
    Client,
    ClientConfig,
    NetworkPolicyDict,
    ProcessResult,
    Sandbox,
    SandboxData,
    SandboxesClient,
    SandboxList,
    SandboxListItem,
    SandboxState,
    SandboxStatus,
    Snapshot,
    SnapshotList,
    SnapshotsClient,
    Transport,
)

__version__ = SDK_VERSION

__all__ = [
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_TEMPLATE_NAME",
    "DEFAULT_TIMEOUT_MIN",
    "DEFAULT_VCPU",
    "APIError",
    "AsyncClient",
    "AsyncSandbox",
    "AsyncSandboxesClient",
    "AsyncSnapshotsClient",
    "AsyncTransport",
    "AtollError",
    "AtollTimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CapacityError",
    "Client",
    "ClientConfig",
    "ConflictError",
    "InvalidArgument",
    "MalformedResponseError",
    "NetworkPolicyDict",
    "NotFoundError",
    "PermissionDeniedError",
    "ProcessResult",
    "RateLimitError",
    "Sandbox",
    "SandboxData",
    "SandboxList",
    "SandboxListItem",
    "SandboxState",
    "SandboxStatus",
    "SandboxesClient",
    "ServerError",
    "Snapshot",
    "SnapshotList",
    "SnapshotsClient",
    "Transport",
    "TransportError",
    "__version__",
]
