"""The public API is exactly ``atoll.__all__``; importing it stays cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import atoll
from atoll import _exceptions

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "DESKTOP_TEMPLATE",
    "Desktop",
    "AsyncDesktop",
    "DesktopProcess",
    "DesktopStatus",
    "DesktopWindow",
    "DisplayInfo",
    "PointerPosition",
    "RecordingStatus",
    "RecordingSummary",
    "ProcessHandle",
    "AsyncProcessHandle",
    "ProcessEvent",
    "ProcessInfo",
    "WatchEvent",
    "MetricsSample",
    "Client",
    "AsyncClient",
    "SandboxesClient",
    "AsyncSandboxesClient",
    "SnapshotsClient",
    "AsyncSnapshotsClient",
    "Filesystem",
    "AsyncFilesystem",
    "Git",
    "AsyncGit",
    "GitResult",
    "GitCommitResult",
    "Ssh",
    "AsyncSsh",
    "SshAccess",
    "SshValidation",
    "Lsp",
    "AsyncLsp",
    "LspError",
    "LspResponse",
    "Pty",
    "AsyncPty",
    "PtyConnection",
    "AsyncPtyConnection",
    "CodeInterpreter",
    "AsyncCodeInterpreter",
    "CodeContext",
    "ExecutionResult",
    "ExecutionLogs",
    "ExecutionError",
    "OutputItem",
    "StreamEvent",
    "CODE_INTERPRETER_TEMPLATE",
    "TemplatesClient",
    "AsyncTemplatesClient",
    "FileInfo",
    "TreeEntry",
    "SearchMatch",
    "FileEdit",
    "EditFileResult",
    "EditResult",
    "PtySession",
    "Template",
    "ImageConfig",
    "Snapshot",
    "SnapshotList",
    "Sandbox",
    "AsyncSandbox",
    "Transport",
    "AsyncTransport",
    "ClientConfig",
    "SandboxData",
    "SandboxStatus",
    "SandboxState",
    "SandboxListItem",
    "SandboxList",
    "ProcessResult",
    "NetworkPolicyDict",
    "DEFAULT_TEMPLATE_NAME",
    "DEFAULT_VCPU",
    "DEFAULT_MEMORY_MIB",
    "DEFAULT_TIMEOUT_MIN",
    "AtollError",
    "InvalidArgument",
    "TransportError",
    "AtollTimeoutError",
    "MalformedResponseError",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "RateLimitError",
    "ServerError",
    "CapacityError",
    "UnavailableError",
    "__version__",
}


def test_all_is_pinned() -> None:
    assert set(atoll.__all__) == EXPECTED
    assert len(atoll.__all__) == len(EXPECTED)
    for name in atoll.__all__:
        assert hasattr(atoll, name), name


def test_every_error_class_is_exported() -> None:
    """Every error the SDK can raise; the failures typed below the server (``OperationFailure``)
    become HTTP answers in the server and never reach a client, so they stay unexported."""
    errors = {
        name
        for name, obj in vars(_exceptions).items()
        if inspect.isclass(obj)
        and issubclass(obj, _exceptions.AtollError)
        and not issubclass(obj, _exceptions.OperationFailure)
    }
    assert {"APIError", "TransportError", "CapacityError"} <= errors <= set(atoll.__all__)
    assert not {"OperationFailure", "FileNotFound"} & set(atoll.__all__)


def test_version_matches_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert atoll.__version__ == "0.1.0" == pyproject["project"]["version"]


def test_sync_and_async_twins_have_the_same_methods() -> None:
    pairs = [
        (atoll.Client, atoll.AsyncClient),
        (atoll.SandboxesClient, atoll.AsyncSandboxesClient),
        (atoll.Sandbox, atoll.AsyncSandbox),
        (atoll.Transport, atoll.AsyncTransport),
        (atoll.Filesystem, atoll.AsyncFilesystem),
        (atoll.Pty, atoll.AsyncPty),
        (atoll.PtyConnection, atoll.AsyncPtyConnection),
        (atoll.CodeInterpreter, atoll.AsyncCodeInterpreter),
        (atoll.TemplatesClient, atoll.AsyncTemplatesClient),
    ]
    renames = {"aclose": "close", "__aenter__": "__enter__", "__aexit__": "__exit__"}
    for sync_cls, async_cls in pairs:
        sync_names = {n for n in dir(sync_cls) if not n.startswith("_") or n in {"__enter__", "__exit__"}}
        async_names = {
            renames.get(n, n)
            for n in dir(async_cls)
            if not n.startswith("_") or n in {"__aenter__", "__aexit__"}
        }
        assert sync_names == async_names, sync_cls
        for name in ("create", "get", "list", "pause", "stop", "start", "delete"):
            if hasattr(async_cls, name):
                assert inspect.iscoroutinefunction(getattr(async_cls, name))
                assert not inspect.iscoroutinefunction(getattr(sync_cls, name))
                assert str(inspect.signature(getattr(sync_cls, name))) == str(
                    inspect.signature(getattr(async_cls, name))
                ).replace("Async", "")


def test_contract_signatures() -> None:
    create = inspect.signature(atoll.SandboxesClient.create)
    params = list(create.parameters.values())[1:]
    assert [p.name for p in params] == [
        "template_name",
        "vcpu",
        "memory_mib",
        "timeout_min",
        "auto_pause",
        "otel_export",
        "telemetry",
        "env_vars",
        "network_policy",
        "http_timeout",
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert [p.default for p in params] == [
        "system/debian:bookworm",
        1,
        1024,
        5,
        False,
        None,
        None,
        None,
        None,
        None,
    ]
    for name in ("get", "pause", "delete", "stop", "start"):
        sig = list(inspect.signature(getattr(atoll.SandboxesClient, name)).parameters.values())[1:]
        assert [(p.name, p.kind, p.default) for p in sig] == [
            ("sandbox", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("http_timeout", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
        ]
    for name in ("invoke_url", "websocket_url"):
        sig = list(inspect.signature(getattr(atoll.SandboxesClient, name)).parameters.values())[1:]
        assert [(p.name, p.kind, p.default) for p in sig] == [
            ("sandbox", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("path", inspect.Parameter.POSITIONAL_OR_KEYWORD, "/"),
            ("port", inspect.Parameter.KEYWORD_ONLY, None),
        ]


def test_importing_atoll_does_not_load_the_server_side() -> None:
    # Not listed: rich and click. httpx itself imports its CLI (and so those) whenever they are installed.
    code = (
        "import sys, atoll\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'alembic', 'pyroute2', 'typer',"
        " 'websockets', 'pydantic'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('atoll.server', 'atoll.runtime', 'atoll.store', 'atoll.cli', 'atoll.router')))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == ""
