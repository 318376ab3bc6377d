"""Liveness, a small view of the host, and the local CA's certificate (no auth: none of it is
tenant data, and clients need the CA before they can trust sandbox URLs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from atoll._exceptions import NotFoundError
from atoll.router import ca_path
from atoll.server import response_models as rm
from atoll.server.cluster_role import runtime_of_nodes
from atoll.server.response_models import answers
from atoll.server.settings import Settings
from atoll.server.state import services

router = APIRouter(prefix="/v1", tags=["health"])
PEM_TYPE = "application/x-pem-file"


def _local_ca(settings: Settings) -> bool:
    return settings.tls_cert is None


@router.get("/health", **answers(rm.Health))
async def health(request: Request) -> dict[str, Any]:
    state = services(request)
    manager, settings = state.manager, state.settings
    runtime, checkpoint = manager.host.backend.name, manager.host.backend.can_checkpoint
    if state.forwarder is not None:  # an API replica runs none: its nodes' (docs/cluster.md)
        runtime, checkpoint = await runtime_of_nodes(state.forwarder.registry)
    return {
        "status": "ok",
        "runtime": runtime,
        "checkpoint": checkpoint,
        # OCI sandboxes in user namespaces of their own (root inside is an unprivileged host uid)
        "userns": getattr(manager.host.backend, "userns", None) is not None,
        "network_pool_ready": manager.host.pool.ready_count,
        "warm_pool_ready": manager.warm.ready_count if manager.warm else 0,
        # each template's own pool (the sum above mixes the default with services and desktops)
        "warm_pools": manager.warm.levels() if manager.warm else {},
        "disk_pool_ready": manager.host.disks.ready_count if manager.host.disks else 0,
        "capacity": await manager.capacity.report(),
        # on-demand system templates being built in the background (or whose build failed)
        "templates_building": builds.report() if (builds := state.template_builds) else {},
        # what SDKs build sandbox URLs from: {scheme}://{id}[-{port}].{domain}
        "sandbox_url": {
            "scheme": settings.sandbox_scheme,
            "domain": f"{settings.sandbox_host}:{settings.sandbox_url_port}",
            "ca": "/v1/ca.pem" if _local_ca(settings) else None,
        },
    }


@router.get(
    "/ca.pem",
    response_class=Response,
    responses={
        200: {
            "content": {PEM_TYPE: {"schema": {"type": "string"}}},
            "description": "The local CA's certificate (PEM)",
        }
    },
)
async def ca_certificate(request: Request) -> Response:
    """The certificate of the CA that issued the router's, for clients to trust sandbox URLs."""
    settings = services(request).settings
    if not _local_ca(settings):
        raise NotFoundError("this server uses the operator's certificate for sandbox URLs: no local CA")
    try:
        pem = ca_path(settings.data_dir).read_bytes()
    except FileNotFoundError:
        raise NotFoundError("the local CA is not created yet") from None
    return Response(pem, media_type=PEM_TYPE)
