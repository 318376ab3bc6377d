"""Response shapes of the routes besides sandboxes and snapshots (``responses``), declared as
``response_model`` so that the OpenAPI document (and the fuzzer that reads it) says what each
route answers.

The wire stays what it was, byte for byte: the routes still build their dicts, and these
models list the keys in the order the dicts have them (FastAPI writes a model's declared fields
first, in declaration order), keep keys they do not name (``extra="allow"``, written after), and
routes pass ``response_model_exclude_unset`` so a key the dict leaves out stays out. A number a
dict may hold as either int or float is ``Number`` (an int stays an int)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from atoll._policy import NetworkPolicy

Number = int | float


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


# processes ------------------------------------------------------------------------------------
class ProcessInfo(Wire):
    pid: int
    command: str
    cwd: str | None
    tag: str | None
    started_at: str | None = Field(description="ISO 8601, UTC")
    running: bool
    exit_code: int | None = Field(default=None, description="once ended (not in a start's answer)")
    ended_at: str | None = Field(default=None, description="once ended (not in a start's answer)")


class ProcessList(Wire):
    items: list[ProcessInfo]


# terminals ------------------------------------------------------------------------------------
class PtySession(Wire):
    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: str
    active: bool
    lazy_start: bool


class PtyList(Wire):
    items: list[PtySession]


# presigned URLs -------------------------------------------------------------------------------
class PresignedUrl(Wire):
    id: str
    token: str
    url: str
    sandbox_id: str
    port: int
    expires_at: str | None
    created_at: str | None


# filesystem -----------------------------------------------------------------------------------
class FileEntry(Wire):
    name: str
    path: str
    is_dir: bool
    size: int
    mode: str = Field(description="permission bits in octal, e.g. '755'")
    mtime: int = Field(description="Unix time")
    owner: str
    group: str
    is_symlink: bool
    link_target: str | None = Field(default=None, description="only for a symlink")


class FileList(Wire):
    items: list[FileEntry]


class Exists(Wire):
    exists: bool


class TreeNode(Wire):
    name: str
    type: Literal["file", "directory"]
    children: list[TreeNode] | None = Field(default=None, description="absent at max_depth")


class Tree(Wire):
    items: list[TreeNode]


class PathList(Wire):
    items: list[str]


class GrepMatch(Wire):
    path: str
    line: int
    content: str


class GrepMatches(Wire):
    items: list[GrepMatch]


class EditResult(Wire):
    diff: str
    replacements: int


class EditFileResult(Wire):
    file: str
    success: bool
    error: str | None = None


class EditFilesResult(Wire):
    items: list[EditFileResult]


class UserHomeDir(Wire):
    user_home_dir: str


class Workdir(Wire):
    workdir: str


# templates ------------------------------------------------------------------------------------
class TemplateInfo(Wire):
    id: str
    name: str
    digest: str | None
    image_config: dict[str, Any] | None
    is_system: bool
    created_at: str | None
    uri: str
    state: str


class TemplateList(Wire):
    items: list[TemplateInfo]
    total_items: int


# egress ---------------------------------------------------------------------------------------
class EgressAllowed(Wire):
    connections: int
    bytes_out: int
    bytes_in: int


class EgressDenied(Wire):
    connections: int
    packets: int
    bytes: int


class EgressDns(Wire):
    answered: int
    refused: int


class EgressProxyStats(Wire):
    connections: int
    denied: int
    transformed: int
    learned_addresses: int


class SandboxNetwork(Wire):
    id: str
    state: str
    network_policy: NetworkPolicy = Field(description="as given at create; injected values masked")
    attached: bool
    mode: str | None = None
    allowed: EgressAllowed | None = None
    denied: EgressDenied | None = None
    dns: EgressDns | None = None
    proxy: EgressProxyStats | None = None


# observing ------------------------------------------------------------------------------------
class MetricsSample(Wire):
    timestamp: str
    cpu_count: int
    cpu_used_pct: Number
    mem_used_mib: Number
    mem_total_mib: Number
    disk_used_mib: Number
    disk_total_mib: Number
    net_rx_bytes: int
    net_tx_bytes: int
    pids: int


class MetricsSamples(Wire):
    items: list[MetricsSample]


class Capacity(Wire):
    vcpu_budget: int
    vcpu_used: int
    memory_mib_budget: int
    memory_mib_used: int


class BuildProgress(Wire):
    progress: Number
    phase: str
    error: str | None = None


class SandboxUrl(Wire):
    scheme: str
    domain: str
    ca: str | None


class WarmPoolLevel(Wire):
    ready: int
    size: int = Field(description="how many of the template the pool keeps ready")


class Health(Wire):
    status: str
    runtime: str
    checkpoint: bool
    userns: bool
    network_pool_ready: int
    warm_pool_ready: int
    warm_pools: dict[str, WarmPoolLevel] = Field(
        default_factory=dict, description="per template (``warm_pool_ready`` is their sum)"
    )
    disk_pool_ready: int
    capacity: Capacity
    templates_building: dict[str, BuildProgress]
    sandbox_url: SandboxUrl


# git and language servers ---------------------------------------------------------------------
class GitResult(Wire):
    output: str
    exit_code: int


class GitCommit(Wire):
    sha: str | None
    result: GitResult


class LspSuccess(Wire):
    success: bool


class LspAnswer(Wire):
    """The language server's JSON-RPC answer, relayed as it sent it."""

    jsonrpc: str
    id: int | str | None = None
    result: Any = None
    error: dict[str, Any] | None = None


# SSH ------------------------------------------------------------------------------------------
class SshAccess(Wire):
    id: str
    sandbox_id: str
    password: str
    expires_at: str | None
    created_at: str | None
    updated_at: str | None
    ssh_command: str


class SshValidation(Wire):
    valid: bool
    sandbox_id: str


# streamed and non-JSON bodies: what ``responses=`` documents for them
def streamed(media_type: str, description: str, *, binary: bool = False) -> dict[int | str, dict[str, Any]]:
    schema: dict[str, Any] = {"type": "string", "format": "binary"} if binary else {"type": "string"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


def streams(media_type: str, description: str, *, binary: bool = False) -> dict[str, Any]:
    """A streaming route's keyword arguments: its body documented as ``media_type``."""
    return {
        "response_class": StreamingResponse,
        "responses": streamed(media_type, description, binary=binary),
    }


def answers(model: type[BaseModel]) -> dict[str, Any]:
    """A route's keyword arguments for answering with ``model`` (the dict's keys, no more)."""
    return {"response_model": model, "response_model_exclude_unset": True}
