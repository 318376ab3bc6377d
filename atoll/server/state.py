"""The application's services, typed: built once by the lifespan (``atoll.server.app``), each
complete when constructed, and handed to routes by the ``services`` dependency (instead of
untyped ``app.state`` lookups)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from atoll._exceptions import ServerError
from atoll.network.egress import EgressService
from atoll.router import PresignedStore
from atoll.server.activity import Activity
from atoll.server.disk_watermark import DiskWatermark
from atoll.server.forward import NodeForwarder
from atoll.server.lsp import LspService
from atoll.server.manager import SandboxManager
from atoll.server.metrics import MetricsService
from atoll.server.processes import ProcessService
from atoll.server.pty import PtyManager
from atoll.server.reconcile import Report
from atoll.server.settings import Settings
from atoll.server.snapshots import SnapshotService
from atoll.server.template_builds import TemplateBuilds
from atoll.server.template_copies import TemplateCopies
from atoll.server.watch import WatchService
from atoll.ssh.access import AccessStore
from atoll.store.observed import ObservedRepository
from atoll.templates.catalog import TemplateCatalog


@dataclass(frozen=True, kw_only=True)
class AppServices:
    settings: Settings
    activity: Activity
    repo: ObservedRepository
    manager: SandboxManager
    egress: EgressService | None  # None on an API replica: its nodes' sandboxes have theirs
    disk_watermark: DiskWatermark
    ptys: PtyManager
    lsp: LspService
    processes: ProcessService
    watches: WatchService
    templates: TemplateCatalog
    template_imports: asyncio.Semaphore  # image pulls at once (routes.templates.IMPORT_SLOTS)
    snapshots: SnapshotService
    metrics: MetricsService
    presigned: PresignedStore
    reconcile_report: Report
    template_builds: TemplateBuilds | None  # None: templates are not built on demand
    ssh_access: AccessStore | None  # None: no SSH gateway runs (its routes answer 501)
    forwarder: NodeForwarder | None = None  # an API replica's way to the nodes (docs/cluster.md)
    # a cluster node's copies of templates imported on other nodes (docs/cluster.md, Templates)
    template_copies: TemplateCopies | None = None


def services(connection: HTTPConnection) -> AppServices:
    """The running application's services (a request or a WebSocket)."""
    found = getattr(connection.app.state, "services", None)
    if not isinstance(found, AppServices):  # only before the lifespan has started them
        raise ServerError("the server is still starting")
    return found


Services = Annotated[AppServices, Depends(services)]
