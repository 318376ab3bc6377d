"""The control plane application: one lifespan that starts the pieces in order (store, host
network rules, runtime, network pool, reconciliation, timeout reaper) and stops them in reverse,
also when the start-up fails half-way; the routes reach them as ``AppServices`` (``state.py``).

Sandboxes outlive the server process: a restart reconciles and adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI

from atoll import dashboard
from atoll._tasks import cancel_and_wait
from atoll.router import build_router
from atoll.server import cluster_role, errors, template_copies
from atoll.server.activity import Activity, ActivityMiddleware
from atoll.server.disk_budget import DiskBudget
from atoll.server.disk_watermark import DiskWatermark
from atoll.server.forward import ForwardToNodeMiddleware, NodeForwarder
from atoll.server.host_cleanup import clean_host_if_unused
from atoll.server.host_setup import make_private_dirs, prepare_host, prepare_process
from atoll.server.limits import BodyLimitMiddleware
from atoll.server.lsp import LspService
from atoll.server.manager import SandboxManager
from atoll.server.metrics import LatencyMiddleware, MetricsService, StateCounter
from atoll.server.processes import ProcessService
from atoll.server.pty import PtyManager
from atoll.server.ratelimit import RateLimitMiddleware, RateLimits
from atoll.server.reconcile import Report, reconcile
from atoll.server.routes import (
    filesystem,
    git,
    health,
    internal,
    internal_templates,
    lsp,
    network,
    observe,
    presigned,
    process,
    process_ws,
    pty,
    sandboxes,
    snapshots,
    templates,
    unavailable,
)
from atoll.server.settings import Settings
from atoll.server.snapshots import SnapshotService
from atoll.server.state import AppServices
from atoll.server.template_builds import TemplateBuilds
from atoll.server.warm import WarmPool
from atoll.server.watch import WatchService
from atoll.ssh import routes as ssh_routes
from atoll.ssh.gateway import public_host_key as ssh_public_host_key
from atoll.ssh.gateway import start_gateway as start_ssh_gateway
from atoll.store import db
from atoll.store.observed import ObservedRepository
from atoll.store.repo import Repository, SnapshotRepository, new_api_key
from atoll.templates.catalog import TemplateCatalog

log = logging.getLogger("atoll.server")
DEFAULT_ORG = "org_default"
FORWARD_CONNECTIONS = 512  # an API replica's connections to all nodes at once (streams included)


async def bootstrap_keys(repo: Repository, settings: Settings) -> str | None:
    """Register the configured key; on a brand-new store without one, mint and return one."""
    await repo.ensure_org(DEFAULT_ORG, "default")
    if settings.api_key:
        await repo.add_key(DEFAULT_ORG, settings.api_key)
        return None
    if await repo.count_keys() == 0:
        key = new_api_key()
        await repo.add_key(DEFAULT_ORG, key)
        return key
    return None


async def _reap_forever(manager: SandboxManager, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await manager.expire_due()
        except Exception:
            log.exception("timeout reaper failed")


async def _closing(what: str, close: Callable[[], Awaitable[object]]) -> None:
    """One step of the unwinding; each runs even when an earlier one failed (a half shutdown leaks)."""
    try:
        await close()
    except Exception:
        log.exception("shutdown step %s failed", what)


@contextlib.asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: Settings, activity: Activity, rate_limits: RateLimits
) -> AsyncIterator[None]:
    """Everything the server runs, started in order; each piece's undoing goes on one exit stack
    the moment it exists, so a shutdown, or a start-up that fails half-way, undoes in reverse
    exactly what was started (nothing stays running or set up on the host)."""
    async with contextlib.AsyncExitStack() as stack:
        app.state.services = await _start(stack, settings, activity, rate_limits)  # routes: state.services()
        yield


async def _start(
    stack: contextlib.AsyncExitStack, settings: Settings, activity: Activity, rate_limits: RateLimits
) -> AppServices:
    def undo(what: str, close: Callable[[], Awaitable[object]]) -> None:
        stack.push_async_callback(_closing, what, close)

    make_private_dirs(settings)
    await prepare_process(settings, undo)
    await asyncio.to_thread(db.upgrade, settings.db_url)
    engine = db.make_engine(settings.db_url, application_name=cluster_role.node_identity(settings))
    undo("the store", engine.dispose)
    undo("rate limits", rate_limits.close)
    rate_limits.share(engine)  # on PostgreSQL, one count per key across the cluster's processes
    # tells the router's cache about state changes; in a cluster, scoped to this node's sandboxes
    repo = ObservedRepository(db.sessions(engine), node_id=cluster_role.node_identity(settings))
    minted = await bootstrap_keys(repo, settings)
    if minted:
        print(
            f"\n  Created the first API key (shown once, stored only as a hash):\n\n    {minted}\n",
            flush=True,
        )
    if settings.runs_sandboxes:  # no sandbox left: no litter on the host (firewall, cgroups, run dir)
        undo("host clean-up", functools.partial(clean_host_if_unused, settings, repo))
    pieces = await prepare_host(settings, undo)
    host, egress, disks = pieces.host, pieces.egress, pieces.disks
    warm = WarmPool(
        host, size=settings.warm_pool_size, template_names=settings.warm_templates, quiet=activity.quiet
    )
    undo("warm pool", warm.close)
    builds = None
    if settings.build_templates and settings.runs_sandboxes:
        builds = TemplateBuilds(host.templates, on_built=warm.wake)
    disk_budget = DiskBudget(
        settings.data_dir,
        (settings.sandboxes_dir, settings.disk_pool_dir),
        ratio=settings.disk_overcommit_ratio,
        reserve_mib=settings.disk_reserve_mib,
    )
    manager = SandboxManager(
        settings=settings,
        repo=repo,
        host=host,
        warm=warm,
        disk_budget=disk_budget,
        template_gate=builds.check if builds is not None else None,  # 503 while one builds
    )
    snapshots_service = SnapshotService(manager, SnapshotRepository(repo.sessions))
    report = Report()
    if settings.runs_sandboxes:  # an API replica's host holds none to adopt or remove
        report = await reconcile(manager)
        report.removed += await snapshots_service.sweep()
    if disks is not None:
        report.removed += await disks.start()
    ptys, lsp_service, processes = PtyManager(manager), LspService(manager), ProcessService(manager)
    undo("language servers", lsp_service.close)
    undo("terminals", ptys.close)
    catalog = TemplateCatalog(repo.sessions, host.templates, max_per_org=settings.max_templates_per_org)
    await catalog.recover(shared_after_s=template_copies.stale_import_after_s(settings))
    metrics = MetricsService(manager, interval_s=settings.metrics_interval_s)
    undo("metrics", metrics.close)
    metrics.start()
    repo.subscribe(StateCounter(manager))
    # in a cluster, other nodes' sandboxes are reached through their routers (docs/cluster.md)
    homes = cluster_role.router_homes(settings, repo)
    router = build_router(settings, manager, repo, homes=homes, http_error=errors.http_error)
    if router.presigned is None:  # build_router always gives it one; a bare Router (tests) has none
        raise RuntimeError("the sandbox router has no presigned-URL store")
    presigned = router.presigned
    undo("router", router.stop)
    await router.start()
    reaper = asyncio.create_task(_reap_forever(manager, settings.reaper_interval_s))
    undo("timeout reaper", functools.partial(cancel_and_wait, reaper))
    disk_watermark = DiskWatermark(disk_budget)
    watermark = asyncio.create_task(disk_watermark.run_forever())
    undo("disk watermark", functools.partial(cancel_and_wait, watermark))
    warm.start()
    cluster = await cluster_role.start(  # registers and heartbeats on PostgreSQL (docs/cluster.md)
        settings, engine, repo, manager.capacity,
        template_names=host.templates.cached, warm_ready=warm.ready_by_template,
        runtime=(host.backend.name, host.backend.can_checkpoint),
        ssh_host_key=ssh_public_host_key(settings),  # the API replicas' gateways pin it
    )  # fmt: skip
    undo("cluster membership", cluster.close)
    forwarder = None
    if settings.role == "api" and cluster.registry is not None and cluster.placer is not None:
        forwarder = NodeForwarder(
            node_id=cluster.node_id or "", registry=cluster.registry, placer=cluster.placer,
            max_connections=FORWARD_CONNECTIONS, cluster_token=settings.cluster_token,
            template_id_for=catalog.id_for,
        )  # fmt: skip
        undo("forwarding to nodes", forwarder.close)
    snapshots_service.on_deleted = cluster_role.snapshot_copies_dropper(settings, cluster)
    import_slots = asyncio.Semaphore(templates.IMPORT_SLOTS)
    copies = template_copies.join(  # imported templates across the cluster (docs/cluster.md)
        settings, registry=cluster.registry, node_id=cluster.node_id, heartbeat=cluster.heartbeat,
        templates=host.templates, catalog=catalog, disk_budget=disk_budget, slots=import_slots,
    )  # fmt: skip
    mover = cluster_role.drain_mover(settings, cluster, manager)
    if mover is not None:  # while this node is draining, its paused sandboxes move away
        undo("moving paused sandboxes off this node", mover.close)
        await mover.start()
    if builds is not None:
        undo("template builds", builds.close)
        builds.start()  # in a thread, in the background: the server answers meanwhile
    ssh_gateway = await start_ssh_gateway(
        manager=manager, ptys=ptys, processes=processes, settings=settings, registry=cluster.registry
    )
    if ssh_gateway is not None:
        undo("ssh gateway", ssh_gateway.close)
    return AppServices(
        settings=settings,
        activity=activity,
        repo=repo,
        manager=manager,
        egress=egress,
        disk_watermark=disk_watermark,
        ptys=ptys,
        lsp=lsp_service,
        processes=processes,
        watches=WatchService(manager),
        templates=catalog,
        template_imports=import_slots,
        snapshots=snapshots_service,
        metrics=metrics,
        presigned=presigned,
        reconcile_report=report,
        template_builds=builds,
        ssh_access=ssh_gateway.store if ssh_gateway is not None else None,
        forwarder=forwarder,
        template_copies=copies,
    )


def create_app(settings: Settings) -> FastAPI:
    activity = Activity()  # what the middleware sees; the warm pool refills only in its lulls
    rate_limits = RateLimits(limit=settings.rate_limit, window=settings.rate_limit_window_s)
    app = FastAPI(
        title="Atoll",
        version="0.1.0",
        summary="Self-hosted sandboxes for AI agents (leap0-compatible wire protocol)",
        lifespan=functools.partial(lifespan, settings=settings, activity=activity, rate_limits=rate_limits),
        redirect_slashes=False,
    )
    errors.install(app)
    app.add_middleware(ForwardToNodeMiddleware)  # innermost: limits and metrics apply first
    # a request an API replica forwarded (it carries the cluster token) was counted there
    app.add_middleware(RateLimitMiddleware, limits=rate_limits, cluster_token=settings.cluster_token)
    app.add_middleware(ActivityMiddleware, activity=activity)
    app.add_middleware(LatencyMiddleware)  # API latency histograms (atoll.server.metrics)
    app.add_middleware(BodyLimitMiddleware)  # outermost: a refused body reaches nothing else
    routes = (sandboxes, process, snapshots, presigned, filesystem, pty, templates, network, git, lsp, health)
    # spec/processes.md: filesystem/watch and metrics (observe), process WebSocket (process_ws)
    for module in (*routes, observe, process_ws):
        app.include_router(module.router)
    app.include_router(internal.router)  # the cluster's node-to-node calls (token only)
    app.include_router(internal_templates.router)
    dashboard.install(app)  # the web dashboard at / (atoll/dashboard)
    app.include_router(ssh_routes.router)
    app.include_router(unavailable.router)  # last: any real route wins over its 501
    return app
