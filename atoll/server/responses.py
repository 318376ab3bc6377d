"""Response shapes of the sandbox and snapshot routes, declared as ``response_model`` so that the
OpenAPI document (and the fuzzer that reads it) describes what each route answers.

The routes still build plain dicts (``schemas.sandbox_body`` and friends, which the dashboard
reuses); these models check and document them. Routes pass ``response_model_exclude_unset``: a
key the dict leaves out (``network_policy`` of ``GET /sandbox/{id}``) stays out, as before."""

from __future__ import annotations

from pydantic import BaseModel, Field

from atoll.network.policy import NetworkPolicy


class SandboxResponse(BaseModel):
    id: str
    template_id: str
    template_name: str
    runtime: str = Field(description="the isolation backend: runc, crun or runsc")
    vcpu: int
    memory: int = Field(description="MiB")
    disk: int = Field(description="MiB")
    timeout: int = Field(description="seconds from launch until the sandbox is stopped")
    state: str = Field(description="the sandbox's state: starting, running, paused, stopped, ...")
    state_reason: str | None = Field(description="why, when no request put it in this state")
    auto_pause: bool
    pause_kind: str | None
    created_at: str | None = Field(description="ISO 8601, UTC")
    timeout_at: int | None = Field(description="Unix time")
    network_policy: NetworkPolicy | None = Field(
        default=None, description="as given at create (omitted by GET /sandbox/{id})"
    )


class SandboxListItem(BaseModel):
    id: str
    template_id: str
    pod_id: str
    state: str
    state_reason: str | None
    launch_time: str | None
    state_change_time: str | None
    timeout_at: int | None
    created_at: str | None


class SandboxList(BaseModel):
    items: list[SandboxListItem]
    total_items: int


class SnapshotResponse(BaseModel):
    id: str
    name: str
    template_id: str
    template_name: str
    source_sandbox_id: str
    vcpu: int
    memory: int = Field(description="MiB")
    disk: int = Field(description="MiB")
    state: str
    size_bytes: int = Field(description="disk blocks the snapshot uses")
    inodes: int | None = Field(description="files and directories it holds; null for an old snapshot")
    network_policy: NetworkPolicy | None
    created_at: str | None


class SnapshotList(BaseModel):
    items: list[SnapshotResponse]
    total_items: int
