"""Atoll's Python SDK: sync and async clients for the sandbox control plane.

Import the public names from ``atoll``; the modules here are private. ``_async`` is the
hand-written source, ``_sync`` is generated from it (``scripts/unasync.py``).
"""

from __future__ import annotations

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.client import AsyncClient
from atoll.sdk._async.filesystem import AsyncFilesystem
from atoll.sdk._async.process import AsyncProcessClient, AsyncSandboxProcess
from atoll.sdk._async.pty import AsyncPty
from atoll.sdk._async.sandbox import AsyncSandbox
from atoll.sdk._async.sandboxes import AsyncSandboxesClient
from atoll.sdk._async.snapshots import AsyncSnapshotsClient
from atoll.sdk._async.templates import AsyncTemplatesClient
from atoll.sdk._config import SDK_VERSION, ClientConfig
from atoll.sdk._files import EditFileResult, EditResult, FileEdit, FileInfo, SearchMatch, TreeEntry
from atoll.sdk._pty import PtySession
from atoll.sdk._pty_connection import AsyncPtyConnection, PtyConnection
from atoll.sdk._sync._transport import Transport
from atoll.sdk._sync.client import Client
from atoll.sdk._sync.filesystem import Filesystem
from atoll.sdk._sync.process import ProcessClient, SandboxProcess
from atoll.sdk._sync.pty import Pty
from atoll.sdk._sync.sandbox import Sandbox
from atoll.sdk._sync.sandboxes import SandboxesClient
from atoll.sdk._sync.snapshots import SnapshotsClient
from atoll.sdk._sync.templates import TemplatesClient
from atoll.sdk._templates import ImageConfig, Template
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
    "AsyncFilesystem",
    "AsyncProcessClient",
    "AsyncPty",
    "AsyncPtyConnection",
    "AsyncSandbox",
    "AsyncSandboxProcess",
    "AsyncSandboxesClient",
    "AsyncSnapshotsClient",
    "AsyncTemplatesClient",
    "AsyncTransport",
    "Client",
    "ClientConfig",
    "EditFileResult",
    "EditResult",
    "FileEdit",
    "FileInfo",
    "Filesystem",
    "ImageConfig",
    "NetworkPolicyDict",
    "ProcessClient",
    "ProcessResult",
    "Pty",
    "PtyConnection",
    "PtySession",
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
    "SearchMatch",
    "Snapshot",
    "SnapshotList",
    "SnapshotsClient",
    "Template",
    "TemplatesClient",
    "TransformRuleDict",
    "Transport",
    "TreeEntry",
]
