"""Liveness and a small view of the host (no auth: it reveals no tenant data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    manager = request.app.state.manager
    return {
        "status": "ok",
        "runtime": manager.backend.name,
        "checkpoint": manager.backend.can_checkpoint,
        "network_pool_ready": manager.pool.ready_count,
        "warm_pool_ready": manager.warm.ready_count if manager.warm else 0,
        "disk_pool_ready": manager.disks.ready_count if manager.disks else 0,
        "capacity": await manager.capacity.report(),
    }
