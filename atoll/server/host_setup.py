"""What a process prepares on its host before it can run sandboxes, in order, each piece's
undoing registered the moment it exists (``app.lifespan``): the host's limits and helpers, the
egress resolver and proxy, the firewall, the network pool, pooled disks and the runtimes.

An API replica (``atoll serve --role api``, docs/cluster.md) runs none: it prepares nothing
here and needs no privileges (``replica_host``), only its private directories."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from atoll._exceptions import ServerError
from atoll.network import firewall
from atoll.network.addressing import AddressPlan
from atoll.network.egress import EgressConfig, EgressService
from atoll.network.pool import NetworkPool
from atoll.runtime import helpers, hostlimits, lxcfs, reaping
from atoll.runtime.base import BACKENDS, RuntimeBackend
from atoll.runtime.base import resolve as resolve_runtime
from atoll.runtime.disk import DiskPool
from atoll.runtime.userns import CLAIMS_DIR, Ranges
from atoll.server.host import SandboxHost
from atoll.server.replica_host import ReplicaHost
from atoll.server.settings import Settings
from atoll.templates.registry import TemplateRegistry

log = logging.getLogger("atoll.server")
Undo = Callable[[str, Callable[[], Awaitable[object]]], None]


@dataclass
class HostPieces:
    host: SandboxHost
    egress: EgressService | None  # None: an API replica's (no sandbox, no egress)
    disks: DiskPool | None  # started after reconciliation (it removes a crashed server's disks)


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
    if settings.userns and name in ("crun", "runc"):  # gVisor maps ids in its own kernel (docs/security.md)
        backend.use_userns()  # type: ignore[attr-defined]  # in its slot's (userns_ranges)
    log.info("runtime %s (checkpoint %s)", name, "available" if backend.can_checkpoint else "unavailable")
    return backend


def userns_ranges(settings: Settings) -> Ranges | None:
    """With user namespaces on, each network slot claims a range of host ids and is made in a
    user namespace mapping it (``atoll.runtime.userns_slot``), which its sandbox joins."""
    if not settings.userns:
        return None
    return Ranges(
        CLAIMS_DIR, base=settings.userns_base, count=settings.userns_ranges, owner=settings.cgroup_parent
    )


def make_private_dirs(settings: Settings) -> None:
    for directory in settings.private_dirs:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # sandbox content below: no host user may reach it (docs/security.md)


async def prepare_process(settings: Settings, undo: Undo) -> None:
    """The host-wide pieces every sandbox relies on (none for an API replica)."""
    if not settings.runs_sandboxes:
        return
    helpers.prepare(settings.helpers_dir)
    reaping.become_subreaper()
    hostlimits.raise_shared_tables()  # sandboxes share them: let memory cgroups bound each one
    undo("lxcfs", functools.partial(lxcfs.stop_if_unused, settings.run_dir))
    if settings.lxcfs:  # /proc/meminfo etc. of OCI sandboxes show their limits
        await lxcfs.start(settings.run_dir)


async def prepare_host(settings: Settings, undo: Undo) -> HostPieces:
    templates = TemplateRegistry(settings.templates_dir, user_root=settings.user_templates_dir)
    if not settings.runs_sandboxes:
        return HostPieces(ReplicaHost(settings=settings, templates=templates), None, None)
    egress = EgressService(
        EgressConfig(
            instance=settings.instance,
            subnet=settings.subnet,
            deny_cidrs=settings.deny_cidrs,
            allow_private_cidrs=settings.allow_private_cidrs,
            upstreams=tuple(settings.dns_upstreams()),
            upstream_ca_bundle=settings.egress_ca_bundle,
        )
    )
    undo("egress", egress.close)
    await egress.start()  # binds the resolver and the proxy: the firewall redirects to their ports
    await firewall.apply(
        instance=settings.instance,
        subnet=settings.subnet,
        iface_prefix=settings.iface_prefix,
        deny_cidrs=settings.deny_cidrs,
        dns_port=egress.dns_port,
        proxy_port=egress.proxy_port,
        open_cidrs=settings.allow_private_cidrs,
        closed_cidrs=egress.closed_cidrs,
    )
    plan = AddressPlan(settings.subnet, instance=settings.instance, iface_prefix=settings.iface_prefix)
    pool = NetworkPool(plan, target_size=settings.netns_pool_size, ranges=userns_ranges(settings))
    undo("network pool", pool.close)
    disks = None
    if settings.disk_quota:  # started even when off: it removes a crashed server's pooled disks
        disks = DiskPool(
            settings.disk_pool_dir,
            size_mib=settings.disk_mib,
            blank_dir=settings.blank_disks_dir,
            target_size=settings.disk_pool_size,
        )
        undo("disk pool", disks.close)
    host = SandboxHost(
        settings=settings,
        backend=load_backend(settings),
        pool=pool,
        templates=templates,
        egress=egress,
        disks=disks if settings.disk_pool_size > 0 else None,
        load_backend=functools.partial(load_backend, settings),
    )
    for name in BACKENDS:  # a runtime with state on this host may hold leftovers to reconcile
        if (settings.run_dir / name).is_dir() and name not in host.backends:
            with contextlib.suppress(ServerError):
                host.backend_named(name)
    return HostPieces(host, egress, disks)
