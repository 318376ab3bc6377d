"""Atoll's Python SDK: sync and async clients for the sandbox control plane.

Import the public names from ``atoll``; the modules here are private. ``_async`` is the
hand-written source, ``_sync`` is generated from it (``scripts/unasync.py``).
"""

from __future__ import annotations

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.client import AsyncClient
from atoll.sdk._async.code_interpreter import AsyncCodeInterpreter
from atoll.sdk._async.desktop import AsyncDesktop
from atoll.sdk._async.filesystem import AsyncFilesystem
from atoll.sdk._async.git import AsyncGit, GitCommitResult, GitResult
from atoll.sdk._async.lsp import AsyncLsp
from atoll.sdk._async.process import AsyncProcessClient, AsyncProcessHandle, AsyncSandboxProcess
from atoll.sdk._async.pty import AsyncPty
from atoll.sdk._async.sandbox import AsyncSandbox
from atoll.sdk._async.sandboxes import AsyncSandboxesClient
from atoll.sdk._async.snapshots import AsyncSnapshotsClient
from atoll.sdk._async.ssh import AsyncSsh, SshAccess, SshValidation
from atoll.sdk._async.templates import AsyncTemplatesClient
from atoll.sdk._config import SDK_VERSION, ClientConfig
from atoll.sdk._desktop import (
    DESKTOP_TEMPLATE,
    DesktopProcess,
    DesktopStatus,
    DesktopWindow,
    DisplayInfo,
    PointerPosition,
    RecordingStatus,
    RecordingSummary,
)
from atoll.sdk._files import EditFileResult, EditResult, FileEdit, FileInfo, SearchMatch, TreeEntry
from atoll.sdk._interpreter import (
    CODE_INTERPRETER_TEMPLATE,
    CodeContext,
    ExecutionError,
    ExecutionLogs,
    ExecutionResult,
    OutputItem,
    StreamEvent,
)
from atoll.sdk._lsp import LspError, LspResponse
from atoll.sdk._observe_models import MetricsSample, WatchEvent
from atoll.sdk._process_models import ProcessEvent, ProcessInfo
from atoll.sdk._pty import PtySession
from atoll.sdk._pty_connection import AsyncPtyConnection, PtyConnection
from atoll.sdk._sync._transport import Transport
from atoll.sdk._sync.client import Client
from atoll.sdk._sync.code_interpreter import CodeInterpreter
from atoll.sdk._sync.desktop import Desktop
from atoll.sdk._sync.filesystem import Filesystem
from atoll.sdk._sync.git import Git
from atoll.sdk._sync.lsp import Lsp
from atoll.sdk._sync.process import ProcessClient, ProcessHandle, SandboxProcess
from atoll.sdk._sync.pty import Pty
from atoll.sdk._sync.sandbox import Sandbox
from atoll.sdk._sync.sandboxes import SandboxesClient
from atoll.sdk._sync.snapshots import SnapshotsClient
from atoll.sdk._sync.ssh import Ssh
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
    "CODE_INTERPRETER_TEMPLATE",
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_TEMPLATE_NAME",
    "DEFAULT_TIMEOUT_MIN",
    "DEFAULT_VCPU",
    "DESKTOP_TEMPLATE",
    "SDK_VERSION",
    "AsyncClient",
    "AsyncCodeInterpreter",
    "AsyncDesktop",
    "AsyncFilesystem",
    "AsyncGit",
    "AsyncLsp",
    "AsyncProcessClient",
    "AsyncProcessHandle",
    "AsyncPty",
    "AsyncPtyConnection",
    "AsyncSandbox",
    "AsyncSandboxProcess",
    "AsyncSandboxesClient",
    "AsyncSnapshotsClient",
    "AsyncSsh",
    "AsyncTemplatesClient",
    "AsyncTransport",
    "Client",
    "ClientConfig",
    "CodeContext",
    "CodeInterpreter",
    "Desktop",
    "DesktopProcess",
    "DesktopStatus",
    "DesktopWindow",
    "DisplayInfo",
    "EditFileResult",
    "EditResult",
    "ExecutionError",
    "ExecutionLogs",
    "ExecutionResult",
    "FileEdit",
    "FileInfo",
    "Filesystem",
    "Git",
    "GitCommitResult",
    "GitResult",
    "ImageConfig",
    "Lsp",
    "LspError",
    "LspResponse",
    "MetricsSample",
    "NetworkPolicyDict",
    "OutputItem",
    "PointerPosition",
    "ProcessClient",
    "ProcessEvent",
    "ProcessHandle",
    "ProcessInfo",
    "ProcessResult",
    "Pty",
    "PtyConnection",
    "PtySession",
    "RecordingStatus",
    "RecordingSummary",
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
    "Ssh",
    "SshAccess",
    "SshValidation",
    "StreamEvent",
    "Template",
    "TemplatesClient",
    "TransformRuleDict",
    "Transport",
    "TreeEntry",
    "WatchEvent",
]
