"""``client.snapshots``: restore a snapshot into a new sandbox (a fork), list, delete.
Snapshots are created from a sandbox: ``sandbox.create_snapshot(...)``."""

from __future__ import annotations

from typing import Any, Generic

from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._validation import (
    check_snapshot_name,
    restore_body,
    sandbox_path,
    snapshot_list_params,
    snapshot_path,
)
from atoll.sdk.models import (
    NetworkPolicyDict,
    SandboxData,
    SandboxFactory,
    SandboxRef,
    SandboxT,
    Snapshot,
    SnapshotList,
    json_object,
)


class AsyncSnapshotsClient(Generic[SandboxT]):
    def __init__(
        self,
        transport: AsyncTransport,
        *,
        sandbox_factory: SandboxFactory[SandboxData, SandboxT],
    ) -> None:
        self._transport = transport
        self._factory = sandbox_factory

    async def create(
        self,
        sandbox: SandboxRef,
        *,
        name: str | None = None,
        kill_sandbox_after: bool = False,
        http_timeout: float | None = None,
    ) -> Snapshot:
        """Checkpoint ``sandbox`` (memory and disk) under ``name`` (generated when omitted);
        the sandbox keeps running unless ``kill_sandbox_after``."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = check_snapshot_name(name)
        if kill_sandbox_after:
            body["kill_sandbox_after"] = True
        response = await self._transport.request(
            "POST",
            sandbox_path(sandbox, "/snapshot/create"),
            json=body,
            expected_status=201,
            timeout=http_timeout,
        )
        return Snapshot.from_dict(json_object(response.content))

    async def restore(
        self,
        *,
        snapshot_name: str,
        auto_pause: bool = False,
        timeout: int | None = None,
        network_policy: NetworkPolicyDict | None = None,
        http_timeout: float | None = None,
    ) -> SandboxT:
        """A brand-new sandbox that continues from the snapshot's memory and disk. ``timeout``
        is in seconds (default 300), as on the wire."""
        body = restore_body(
            snapshot_name=snapshot_name, auto_pause=auto_pause, timeout=timeout, network_policy=network_policy
        )
        response = await self._transport.request(
            "POST", "/v1/snapshot/restore", json=body, expected_status=201, timeout=http_timeout
        )
        return self._factory(SandboxData.from_dict(json_object(response.content)))

    async def list(
        self,
        *,
        query: str = "",
        sort: str = "created_at",
        order_by: str = "desc",
        page: int = 1,
        page_size: int = 20,
        http_timeout: float | None = None,
    ) -> SnapshotList:
        params = snapshot_list_params(
            query=query, sort=sort, order_by=order_by, page=page, page_size=page_size
        )
        response = await self._transport.request("GET", "/v1/snapshots", params=params, timeout=http_timeout)
        return SnapshotList.from_dict(json_object(response.content))

    async def get(self, snapshot: Snapshot | str, http_timeout: float | None = None) -> Snapshot:
        response = await self._transport.request("GET", snapshot_path(snapshot), timeout=http_timeout)
        return Snapshot.from_dict(json_object(response.content))

    async def delete(self, snapshot: Snapshot | str, http_timeout: float | None = None) -> None:
        """Delete a snapshot and free its disk; 409 while a sandbox restored from it lives."""
        await self._transport.request(
            "DELETE", snapshot_path(snapshot), expected_status=204, timeout=http_timeout
        )
