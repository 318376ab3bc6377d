"""Atoll's Python SDK: sync and async clients for the sandbox control plane.

Import the public names from ``atoll``; the modules here are private. ``_async`` is the
hand-written source, ``_sync`` is generated from it (``scripts/unasync.py``).
"""

from __future__ import annotations

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.client import AsyncClient
from atoll.sdk._async.process import AsyncProcessClient, AsyncSandboxProcess
from atoll.sdk._async.sandbox import AsyncSandbox
from atoll.sdk._async.sandboxes import AsyncSandboxesClient
from atoll.sdk._async.snapshots import AsyncSnapshotsClient
from atoll.sdk._config import SDK_VERSION, ClientConfig
from atoll.sdk._sync._transport import Transport
from atoll.sdk._sync.client import Client
from atoll.sdk._sync.process import ProcessClient, SandboxProcess
from atoll.sdk._sync.sandbox import Sandbox
from atoll.sdk._sync.sandboxes import SandboxesClient
from atoll.sdk._sync.snapshots import SnapshotsClient
from atoll.sdk._validation import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_TEMPLATE_NAME,
    DEFAULT_TIMEOUT_MIN,
    DEFAULT_VCPU,
)
from atoll.sdk.models import (
    NetworkPolicyDict,
    ProcessResult,
    SandboxData,
    SandboxFactory,
    SandboxList,
    SandboxListItem,
    SandboxRef,
    SandboxState,
    SandboxStatus,
    Snapshot,
    SnapshotList,
    TransformRuleDict,
)

__all__ = [
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_TEMPLATE_NAME",
    "DEFAULT_TIMEOUT_MIN",
    "DEFAULT_VCPU",
    "SDK_VERSION",
    "AsyncClient",
    "AsyncProcessClient",
    "AsyncSandbox",
    "AsyncSandboxProcess",
    "AsyncSandboxesClient",
    "AsyncSnapshotsClient",
    "AsyncTransport",
    "Client",
    "ClientConfig",
    "NetworkPolicyDict",
    "ProcessClient",
    "ProcessResult",
    "Sandbox",
    "SandboxData",
    "SandboxFactory",
    "SandboxList",
    "SandboxListItem",
    "SandboxProcess",
    "SandboxRef",
    "SandboxState",
    "SandboxStatus",
    "SandboxesClient",
    "Snapshot",
    "SnapshotList",
    "SnapshotsClient",
    "TransformRuleDict",
    "Transport",
]
