"""Request bodies and response shapes of the wire protocol (leap0-compatible)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from atoll.network.policy import NetworkPolicy
from atoll.server import limits
from atoll.store.models import SandboxRow, SnapshotRow
from atoll.templates.registry import DEFAULT_TEMPLATE_NAME

StrictInt = Annotated[int, Field(strict=True)]
MAX_PAGE = 1_000_000  # list pages: the offset must fit the database's integers
# environment variables (create's env_vars, exec's and PTY's envs): limits in docs/limits.md
EnvVars = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=limits.ENV_NAME_MAX_CHARS, pattern=r"^[^=\x00]+$")],
        Annotated[str, Field(max_length=limits.ENV_VALUE_MAX_CHARS)],
    ],
    AfterValidator(limits.check_env),
]
# text the kernel gets (exec's command and cwd, names stored and used in paths)
Text = Annotated[str, AfterValidator(limits.check_text)]
Command = Annotated[str, Field(min_length=1), AfterValidator(limits.check_command)]


class CreateSandboxBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template_name: Annotated[Text, Field(min_length=1, max_length=64)] = DEFAULT_TEMPLATE_NAME
    vcpu: Annotated[StrictInt, Field(ge=1, le=8)] = 1
    memory: Annotated[StrictInt, Field(ge=512, le=8192)] = 1024
    timeout: Annotated[StrictInt, Field(ge=1, le=28800)] = 300
    auto_pause: Annotated[bool, Field(strict=True)] = False
    env_vars: EnvVars | None = None
    network_policy: NetworkPolicy | None = None
    mounts: list[dict[str, Any]] | None = None

    @field_validator("memory")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be an even number of MiB between 512 and 8192")
        return value

    @field_validator("mounts")
    @classmethod
    def _no_mounts(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("object-storage mounts are not supported by this server")
        return value


class CreateSnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")] | None = None
    kill_sandbox_after: Annotated[bool, Field(strict=True)] = False


class RestoreSnapshotBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    snapshot_name: Annotated[Text, Field(min_length=1, max_length=64)]
    auto_pause: Annotated[bool, Field(strict=True)] = False
    timeout: Annotated[StrictInt, Field(ge=1, le=28800)] | None = None
    network_policy: NetworkPolicy | None = None


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: Command
    cwd: Annotated[Text, Field(min_length=1, max_length=4096, pattern=r"^/")] | None = None
    envs: EnvVars | None = None
    timeout: Annotated[StrictInt, Field(ge=1, le=86400)] | None = None


class ExecuteResponse(BaseModel):
    exit_code: int
    stdout: str
    stderr: str


def iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def sandbox_body(row: SandboxRow, *, with_policy: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "template_id": row.template_id,
        "template_name": row.template_name,
        "runtime": row.runtime,
        "vcpu": row.vcpu,
        "memory": row.memory,
        "disk": row.disk,
        "timeout": row.timeout,
        "state": row.state,
        "state_reason": row.state_reason,  # why, when no request put it there (e.g. "failed")
        "auto_pause": row.auto_pause,
        "pause_kind": row.pause_kind,
        "created_at": iso(row.created_at),
        "timeout_at": int(row.timeout_at.timestamp()) if row.timeout_at else None,
    }
    if with_policy:
        body["network_policy"] = row.network_policy.wire() if row.network_policy else None
    return body


def list_item(row: SandboxRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "template_id": row.template_id,
        "pod_id": row.id,
        "state": row.state,
        "state_reason": row.state_reason,
        "launch_time": iso(row.launch_time),
        "state_change_time": iso(row.state_change_time),
        "timeout_at": int(row.timeout_at.timestamp()) if row.timeout_at else None,
        "created_at": iso(row.created_at),
    }


def snapshot_body(row: SnapshotRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "template_id": row.template_id,
        "template_name": row.template_name,
        "source_sandbox_id": row.source_sandbox_id,
        "vcpu": row.vcpu,
        "memory": row.memory,
        "disk": row.disk,
        "state": row.state,
        "size_bytes": row.size_bytes,  # blocks the copy uses (not apparent sizes)
        "inodes": row.inodes,  # files and directories the copy uses; null for an old snapshot
        "network_policy": row.network_policy.wire() if row.network_policy else None,
        "created_at": iso(row.created_at),
    }
