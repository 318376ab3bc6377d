"""The control plane application: one lifespan that starts the pieces in order (store, host
network rules, runtime, network pool, reconciliation, timeout reaper) and stops them in reverse.

Sandboxes outlive the server process: a restart reconciles and adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from atoll._exceptions import ServerError
from atoll._tasks import cancel_and_wait
from atoll.network import firewall
from atoll.network.addressing import AddressPlan
from atoll.network.egress import EgressConfig, EgressService
from atoll.network.pool import NetworkPool
from atoll.router import ObservedRepository, build_router
from atoll.runtime import helpers, hostlimits, reaping
from atoll.runtime.base import BACKENDS, RuntimeBackend
from atoll.runtime.base import resolve as resolve_runtime
from atoll.runtime.disk import DiskPool
from atoll.server import errors
from atoll.server.activity import Activity, ActivityMiddleware
from atoll.server.manager import SandboxManager
from atoll.server.pty import PtyManager
from atoll.server.ratelimit import RateLimitMiddleware
from atoll.server.reconcile import reconcile
from atoll.server.routes import (
    filesystem,
    health,
    network,
    presigned,
    process,
    pty,
    sandboxes,
    snapshots,
    templates,
)
from atoll.server.settings import Settings
from atoll.server.snapshots import SnapshotService
from atoll.server.warm import WarmPool
from atoll.store import db
from atoll.store.repo import Repository, SnapshotRepository, new_api_key
from atoll.templates.catalog import TemplateCatalog
from atoll.templates.registry import TemplateRegistry

log = logging.getLogger("atoll.server")
DEFAULT_ORG = "org_default"


def load_backend(settings: Settings, name: str | None = None) -> RuntimeBackend:
    """The server's default backend, or the one called ``name`` (a template may ask for one)."""
    default = name is None
    name = resolve_runtime(settings.runtime) if name is None else name
    if name not in BACKENDS:
        raise RuntimeError(f"unknown runtime {name!r} (known: {', '.join(BACKENDS)})")
    module_name, _, attr = BACKENDS[name].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), attr)
    binary = str(settings.runtime_binary) if default and settings.runtime_binary else shutil.which(name)
    if binary is None:
        how = "bash scripts/setup-gvisor.sh" if name == "runsc" else f"apt-get install {name}"
        raise RuntimeError(f"{name} is not installed ({how})")
    backend: RuntimeBackend = cls(
        binary=binary, state_root=settings.run_dir / name, cgroup_parent=settings.cgroup_parent
    )
    log.info("runtime %s (checkpoint %s)", name, "available" if backend.can_checkpoint else "unavailable")
    return backend


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


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    for directory in (settings.data_dir, settings.sandboxes_dir, settings.snapshots_dir, settings.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    helpers.prepare(settings.helpers_dir)
    reaping.become_subreaper()
    hostlimits.raise_shared_tables()  # sandboxes share them: let memory cgroups bound each one
    await asyncio.to_thread(db.upgrade, settings.db_url)
    engine = db.make_engine(settings.db_url)
    repo = ObservedRepository(db.sessions(engine))  # tells the router's cache about state changes
    minted = await bootstrap_keys(repo, settings)
    if minted:
        print(
            f"\n  Created the first API key (shown once, stored only as a hash):\n\n    {minted}\n",
            flush=True,
        )
    egress = EgressService(
        EgressConfig(
            instance=settings.instance,
            subnet=settings.subnet,
            deny_cidrs=settings.deny_cidrs,
            upstreams=tuple(settings.dns_upstreams()),
            upstream_ca_bundle=settings.egress_ca_bundle,
        )
    )
    await egress.start()  # binds the resolver and the proxy: the firewall redirects to their ports
    await firewall.apply(
        instance=settings.instance,
        subnet=settings.subnet,
        iface_prefix=settings.iface_prefix,
        deny_cidrs=settings.deny_cidrs,
        dns_port=egress.dns_port,
        proxy_port=egress.proxy_port,
    )
    plan = AddressPlan(settings.subnet, instance=settings.instance, iface_prefix=settings.iface_prefix)
    pool = NetworkPool(plan, target_size=settings.netns_pool_size)
    manager = SandboxManager(
        settings=settings,
        repo=repo,
        backend=load_backend(settings),
        pool=pool,
        templates=TemplateRegistry(settings.templates_dir, user_root=settings.user_templates_dir),
        load_backend=functools.partial(load_backend, settings),
    )
    for name in BACKENDS:  # a runtime with state on this host may hold leftovers to reconcile
        if (settings.run_dir / name).is_dir() and name not in manager.backends:
            with contextlib.suppress(ServerError):
                manager.backend_named(name)
    manager.egress = egress
    app.state.egress = egress
    snapshots_service = SnapshotService(manager, SnapshotRepository(repo.sessions))
    report = await reconcile(manager)
    report.removed += await snapshots_service.sweep()
    activity: Activity = app.state.activity
    disks = None
    if settings.disk_quota:  # started even when off: it removes a crashed server's pooled disks
        disks = DiskPool(
            settings.disk_pool_dir,
            size_mib=settings.disk_mib,
            blank_dir=settings.blank_disks_dir,
            target_size=settings.disk_pool_size,
        )
        report.removed += await disks.start()
        manager.disks = disks if settings.disk_pool_size > 0 else None
    app.state.repo = repo
    app.state.manager = manager
    app.state.ptys = ptys = PtyManager(manager)
    app.state.templates = TemplateCatalog(
        repo.sessions, manager.templates, max_per_org=settings.max_templates_per_org
    )
    await app.state.templates.recover()
    app.state.snapshots = snapshots_service
    app.state.reconcile_report = report
    router = build_router(settings, manager, repo)
    await router.start()
    app.state.presigned = router.presigned
    reaper = asyncio.create_task(_reap_forever(manager, settings.reaper_interval_s))
    manager.warm = warm = WarmPool(
        manager, size=settings.warm_pool_size, template_names=settings.warm_templates, quiet=activity.quiet
    )
    warm.start()
    try:
        yield
    finally:
        await cancel_and_wait(reaper)
        # in order, and each step even when an earlier one failed: a half shutdown leaks
        steps = [router.stop, ptys.close, warm.close, *([disks.close] if disks else []), pool.close]
        for step in (*steps, egress.close, engine.dispose):
            try:
                await step()
            except Exception:
                log.exception("shutdown step %s failed", getattr(step, "__qualname__", step))


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Atoll",
        version="0.1.0",
        summary="Self-hosted sandboxes for AI agents (leap0-compatible wire protocol)",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.activity = activity = Activity()
    errors.install(app)
    app.add_middleware(RateLimitMiddleware, limit=settings.rate_limit, window=settings.rate_limit_window_s)
    app.add_middleware(ActivityMiddleware, activity=activity)
    for module in (sandboxes, process, snapshots, presigned, filesystem, pty, templates, network, health):
        app.include_router(module.router)
    return app
