"""The ``atoll`` command: run the server, build templates, and drive sandboxes through the SDK."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from atoll.cli import sandbox as sandbox_commands
from atoll.cli import ssh as ssh_commands
from atoll.cli import templates as template_commands

app = typer.Typer(help="Atoll: self-hosted sandboxes for AI agents.", no_args_is_help=True)
template_app = typer.Typer(help="Build and list templates.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys (run on the server host).", no_args_is_help=True)
app.add_typer(template_app, name="template")
template_commands.register(template_app)  # create, catalog, rename, delete (through the API)
app.add_typer(sandbox_commands.app, name="sandbox")
ssh_commands.register(sandbox_commands.app)  # atoll sandbox ssh ID
app.add_typer(keys_app, name="keys")
console = Console()

DataDir = Annotated[Path, typer.Option(envvar="ATOLL_DATA_DIR", help="State directory.")]
TemplatesDir = Annotated[
    Path | None, typer.Option(envvar="ATOLL_TEMPLATES_DIR", help="Template cache (default: shared).")
]


def _build_default_template(templates_dir: Path, *, force: bool = False) -> None:
    from atoll.templates.build import overlay_users
    from atoll.templates.registry import DEFAULT_TEMPLATE_NAME, TemplateRegistry

    existing = TemplateRegistry(templates_dir).get(DEFAULT_TEMPLATE_NAME)
    if not force and existing is not None and overlay_users(existing.rootfs):
        # an older build that sandboxes (maybe another server's) run on cannot be replaced now:
        # start with it rather than fail; `atoll template build` updates it once unused
        from atoll.templates.system import find

        if not find(DEFAULT_TEMPLATE_NAME).is_current(TemplateRegistry(templates_dir)):
            console.print(f"[yellow]{DEFAULT_TEMPLATE_NAME} is out of date but in use: starting with it[/]")
        return
    template_commands.build_system([DEFAULT_TEMPLATE_NAME], templates_dir, force=force)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="ATOLL_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="ATOLL_PORT")] = 7700,
    instance: Annotated[str, typer.Option(envvar="ATOLL_INSTANCE", help="Names host resources.")] = "main",
    data_dir: DataDir = Path("/var/lib/atoll"),
    templates_dir: TemplatesDir = None,
    database_url: Annotated[str | None, typer.Option(envvar="ATOLL_DATABASE_URL")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="ATOLL_API_KEY", help="Register this key.")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            envvar="ATOLL_RUNTIME",
            help="Default backend: auto (runc if CRIU works, else crun), crun, runc, runsc (gVisor).",
        ),
    ] = "auto",
    runtime_binary: Annotated[
        Path | None,
        typer.Option(envvar="ATOLL_RUNTIME_BINARY", help="The runtime's executable (default: on PATH)."),
    ] = None,
    snapshots_dir: Annotated[
        Path | None, typer.Option(envvar="ATOLL_SNAPSHOTS_DIR", help="Snapshot store (default: DATA_DIR).")
    ] = None,
    subnet: Annotated[str, typer.Option(envvar="ATOLL_SUBNET")] = "10.200.0.0/16",
    iface_prefix: Annotated[str, typer.Option(envvar="ATOLL_IFACE_PREFIX")] = "atl",
    deny_cidr: Annotated[list[str] | None, typer.Option(help="Extra egress deny range (repeat).")] = None,
    allow_private_cidr: Annotated[
        list[str] | None,
        typer.Option(help="Private range sandboxes may reach when their policy names it (repeat)."),
    ] = None,
    template_registry: Annotated[
        list[str] | None,
        typer.Option(help="Registry host[:port] template imports may use (repeat; default: any public)."),
    ] = None,
    dns_server: Annotated[
        list[str] | None,
        typer.Option(help="Upstream of Atoll's sandbox resolver, IP or IP:PORT (repeat; 'none' for no DNS)."),
    ] = None,
    egress_ca_bundle: Annotated[
        Path | None,
        typer.Option(envvar="ATOLL_EGRESS_CA_BUNDLE", help="CA bundle transforms verify upstreams with."),
    ] = None,
    pids_limit: Annotated[int, typer.Option(envvar="ATOLL_PIDS_LIMIT", help="Processes per sandbox.")] = 1024,
    metrics_interval: Annotated[
        float, typer.Option(envvar="ATOLL_METRICS_INTERVAL_S", help="Seconds between metrics samples.")
    ] = 5.0,
    disk_mib: Annotated[
        int, typer.Option(envvar="ATOLL_DISK_MIB", help="Disk per sandbox (upper layer and /etc), MiB.")
    ] = 10240,
    disk_quota: Annotated[
        bool, typer.Option(envvar="ATOLL_DISK_QUOTA", help="Enforce --disk-mib with a loop-mounted image.")
    ] = True,
    lxcfs: Annotated[
        bool, typer.Option(envvar="ATOLL_LXCFS", help="/proc/meminfo etc. from LXCFS (own limits).")
    ] = True,
    userns: Annotated[
        bool, typer.Option(envvar="ATOLL_USERNS", help="OCI sandboxes in user namespaces.")
    ] = False,
    userns_base: Annotated[
        int, typer.Option(envvar="ATOLL_USERNS_BASE", help="First host uid/gid of the sandboxes' ranges.")
    ] = 1 << 30,
    rate_limit: Annotated[
        int, typer.Option(envvar="ATOLL_RATE_LIMIT", help="API requests per key per window (0: off).")
    ] = 1000,
    rate_limit_window: Annotated[
        float, typer.Option(envvar="ATOLL_RATE_LIMIT_WINDOW", help="Rate limit window, seconds.")
    ] = 60.0,
    netns_pool_size: Annotated[int, typer.Option(envvar="ATOLL_NETNS_POOL")] = 4,
    warm_pool_size: Annotated[
        int, typer.Option(envvar="ATOLL_WARM_POOL", help="Sandboxes booted ahead of demand (0: off).")
    ] = 2,
    warm_desktop_pool_size: Annotated[
        int,
        typer.Option(envvar="ATOLL_WARM_DESKTOP_POOL", help="Booted desktops kept ready (0: off)."),
    ] = 1,
    warm_template: Annotated[
        list[str] | None,
        typer.Option(
            help="A template the warm pool keeps ready (repeatable; default: the default "
            "template, the code interpreter and the desktop)."
        ),
    ] = None,
    disk_pool_size: Annotated[
        int, typer.Option(envvar="ATOLL_DISK_POOL", help="Sandbox disks mounted ahead of demand (0: off).")
    ] = 4,
    max_sandboxes_per_org: Annotated[int | None, typer.Option(envvar="ATOLL_MAX_SANDBOXES")] = None,
    snapshot_quota_mib: Annotated[
        int,
        typer.Option(
            envvar="ATOLL_SNAPSHOT_QUOTA_MIB",
            help="What one organisation's snapshots may use (MiB); 0: no limit.",
        ),
    ] = 51200,
    snapshot_quota_inodes: Annotated[
        int,
        typer.Option(
            envvar="ATOLL_SNAPSHOT_QUOTA_INODES",
            help="How many files (inodes) one organisation's snapshots may hold; 0: no limit.",
        ),
    ] = 2_000_000,
    transition_timeout_s: Annotated[
        float,
        typer.Option(
            envvar="ATOLL_TRANSITION_TIMEOUT_S",
            min=0.1,
            help="Seconds one boot, pause, resume, stop or delete may take before it falls back.",
        ),
    ] = 300.0,
    snapshot_timeout_s: Annotated[
        float,
        typer.Option(
            envvar="ATOLL_SNAPSHOT_TIMEOUT_S",
            min=0.1,
            help="Seconds one snapshot may take before it is abandoned (the sandbox runs on).",
        ),
    ] = 1800.0,
    cpu_overcommit: Annotated[
        float, typer.Option(envvar="ATOLL_CPU_OVERCOMMIT", help="vCPU budget per host CPU.")
    ] = 128.0,
    memory_overcommit: Annotated[
        float, typer.Option(envvar="ATOLL_MEMORY_OVERCOMMIT", help="Memory budget per MiB of host memory.")
    ] = 8.0,
    disk_overcommit_ratio: Annotated[
        float,
        typer.Option(
            envvar="ATOLL_DISK_OVERCOMMIT",
            min=0.01,
            help="Sandbox disk sizes per MiB the data filesystem can back.",
        ),
    ] = 50.0,
    disk_reserve_mib: Annotated[
        int,
        typer.Option(envvar="ATOLL_DISK_RESERVE_MIB", min=0, help="Kept free on the data filesystem, MiB."),
    ] = 1024,
    import_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Local image sources must be under these (repeat; default DATA_DIR/imports)."),
    ] = None,
    router_host: Annotated[
        list[str] | None, typer.Option(help="Sandbox router address (repeat; default 127.0.0.1 and ::1).")
    ] = None,
    router_port: Annotated[int, typer.Option(envvar="ATOLL_ROUTER_PORT", help="Sandbox router port.")] = 7701,
    ssh_port: Annotated[
        int, typer.Option(envvar="ATOLL_SSH_PORT", help="SSH gateway port (0: no gateway).")
    ] = 2222,
    ssh_public_host: Annotated[
        str | None, typer.Option(help="Host named in ssh_command (default: the API request's host).")
    ] = None,
    ssh_access_ttl_s: Annotated[int, typer.Option(help="Lifetime of an SSH access, seconds.")] = 86400,
    ssh_login_timeout_s: Annotated[
        float, typer.Option(help="SSH: seconds from connecting to logging in, then closed.")
    ] = 30.0,
    ssh_idle_timeout_s: Annotated[
        float, typer.Option(help="SSH: seconds without session data before closing (0: never).")
    ] = 3600.0,
    ssh_max_connections_per_address: Annotated[
        int, typer.Option(help="SSH: open connections from one client address.")
    ] = 16,
    ssh_max_connections: Annotated[int, typer.Option(help="SSH: open connections in all.")] = 1024,
    max_connections_per_address: Annotated[
        int, typer.Option(help="API and router: open connections from one client address.")
    ] = 1024,
    sandbox_domain: Annotated[
        str, typer.Option(envvar="ATOLL_SANDBOX_DOMAIN", help="Sandbox URLs: {id}[-{port}].DOMAIN[:PORT].")
    ] = "sbx.localhost",
    presigned_domain: Annotated[
        str | None,
        typer.Option(envvar="ATOLL_PRESIGNED_DOMAIN", help="Presigned URL domain (default: sandbox domain)."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(envvar="ATOLL_TLS_CERT", help="Router certificate (wildcard; default: a local CA's)."),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(envvar="ATOLL_TLS_KEY", help="Router private key.")] = None,
    build_template: Annotated[bool, typer.Option(help="Build the default template if missing.")] = True,
    build_templates: Annotated[
        bool,
        typer.Option(
            envvar="ATOLL_BUILD_TEMPLATES",
            help="Build missing on-demand system templates (code interpreter) in the background.",
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(envvar="ATOLL_LOG_LEVEL")] = "info",
) -> None:
    """Run the control plane on HOST:PORT."""
    import uvicorn

    from atoll._conn_guard import configure_process_guard, raise_fd_limit
    from atoll.server.app import create_app
    from atoll.server.limits import LimitedHttpToolsProtocol
    from atoll.server.settings import Settings

    if os.geteuid() != 0:
        raise typer.BadParameter("atoll serve manages namespaces, cgroups and nftables: run it as root")
    settings = Settings(
        instance=instance,
        data_dir=data_dir,
        templates_dir=templates_dir or Path("/var/lib/atoll/templates"),
        database_url=database_url,
        host=host,
        port=port,
        api_key=api_key,
        runtime=runtime,  # type: ignore[arg-type]
        runtime_binary=runtime_binary,
        snapshots_root=snapshots_dir,
        subnet=subnet,
        iface_prefix=iface_prefix,
        deny_cidrs=tuple(deny_cidr or ()),
        allow_private_cidrs=tuple(allow_private_cidr or ()),
        template_registries=tuple(template_registry or ()),
        dns_servers=tuple(s for s in dns_server if s != "none") if dns_server else None,
        egress_ca_bundle=egress_ca_bundle,
        pids_limit=pids_limit,
        metrics_interval_s=metrics_interval,
        disk_mib=disk_mib,
        disk_quota=disk_quota,
        lxcfs=lxcfs,
        userns=userns,
        userns_base=userns_base,
        rate_limit=rate_limit,
        rate_limit_window_s=rate_limit_window,
        netns_pool_size=netns_pool_size,
        warm_pool_size=warm_pool_size,
        warm_desktop_pool_size=warm_desktop_pool_size,
        warm_templates=tuple(warm_template or Settings.model_fields["warm_templates"].default),
        disk_pool_size=disk_pool_size,
        max_sandboxes_per_org=max_sandboxes_per_org,
        snapshot_quota_bytes=snapshot_quota_mib * 1024 * 1024 if snapshot_quota_mib else None,
        snapshot_quota_inodes=snapshot_quota_inodes or None,
        transition_timeout_s=transition_timeout_s,
        snapshot_timeout_s=snapshot_timeout_s,
        cpu_overcommit=cpu_overcommit,
        memory_overcommit=memory_overcommit,
        disk_overcommit_ratio=disk_overcommit_ratio,
        disk_reserve_mib=disk_reserve_mib,
        template_import_dirs=tuple(import_dir) if import_dir else None,
        router_hosts=tuple(router_host) if router_host else ("127.0.0.1", "::1"),
        router_port=router_port,
        ssh_port=ssh_port,
        ssh_public_host=ssh_public_host,
        ssh_access_ttl_s=ssh_access_ttl_s,
        ssh_login_timeout_s=ssh_login_timeout_s,
        ssh_idle_timeout_s=ssh_idle_timeout_s,
        ssh_max_connections_per_address=ssh_max_connections_per_address,
        ssh_max_connections=ssh_max_connections,
        max_connections_per_address=max_connections_per_address,
        sandbox_domain=sandbox_domain,
        presigned_domain=presigned_domain,
        tls_cert=tls_cert,
        tls_key=tls_key,
        build_templates=build_templates,
    )
    if build_template:
        _build_default_template(settings.templates_dir)
    if build_templates:
        from atoll.server.template_builds import log_to_stderr

        log_to_stderr(log_level)
    console.print(f"Atoll API on [bold]http://{host}:{port}[/] (OpenAPI at /docs)")
    example = (
        f"{settings.sandbox_scheme}://{{id}}[-{{port}}].{settings.sandbox_host}:{settings.sandbox_url_port}/"
    )
    console.print(f"Sandbox URLs on [bold]{example}[/] ({', '.join(settings.router_hosts)})")
    if settings.ssh_port:
        where = f"{settings.ssh_host}:{settings.ssh_port}"
        console.print(f"SSH gateway on [bold]{where}[/] (accesses: POST /v1/sandbox/{{id}}/ssh/access)")
    if settings.tls_cert is None:
        from atoll.router import ca_path

        console.print(
            f"Sandbox URLs' TLS CA: [bold]{ca_path(settings.data_dir)}[/] (also GET /v1/ca.pem;"
            " trust it, e.g. SSL_CERT_FILE=...; plain HTTP works on the same port)"
        )
    raise_fd_limit()  # before the guard reads it: per-address caps and the fd reserve
    configure_process_guard(per_address_max=settings.max_connections_per_address)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        loop="uvloop",
        http=LimitedHttpToolsProtocol,  # httptools, with a bound on the header section (431)
        timeout_graceful_shutdown=10,
        # longer than clients keep idle connections (httpx: 5 s, uvicorn's default too): a
        # client reusing one just as the server closed it gets a broken connection instead of
        # an answer, which under a burst of creates happened to requests it had queued
        timeout_keep_alive=75,
    )


@template_app.command("build")
def template_build(
    name: Annotated[
        str | None, typer.Argument(help="e.g. system/code-interpreter (default: system/debian:bookworm)")
    ] = None,
    templates_dir: TemplatesDir = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when cached.")] = False,
    all_templates: Annotated[bool, typer.Option("--all", help="Build every system template.")] = False,
) -> None:
    """Build a system template on this host (cached: rebuilt only when its inputs changed)."""
    from atoll.templates.registry import DEFAULT_TEMPLATE_NAME
    from atoll.templates.system import SYSTEM_TEMPLATES

    if all_templates and name is not None:
        raise typer.BadParameter("give a NAME or --all, not both")
    names = [t.name for t in SYSTEM_TEMPLATES] if all_templates else [name or DEFAULT_TEMPLATE_NAME]
    template_commands.build_system(names, templates_dir or Path("/var/lib/atoll/templates"), force=force)


@template_app.command("list")
def template_list(templates_dir: TemplatesDir = None) -> None:
    """Templates cached on this host."""
    from atoll.templates.registry import TemplateRegistry

    registry = TemplateRegistry(templates_dir or Path("/var/lib/atoll/templates"))
    table = Table("name", "id", "PORT")
    for name in registry.names():
        template = registry.get(name)
        if template is not None:
            table.add_row(template.name, template.id, str(template.port))
    console.print(table)


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation id; created when new.")] = "org_default",
    data_dir: DataDir = Path("/var/lib/atoll"),
    database_url: Annotated[str | None, typer.Option(envvar="ATOLL_DATABASE_URL")] = None,
) -> None:
    """Mint an API key for an organisation and print it (only its hash is stored)."""
    from atoll.store import db
    from atoll.store.repo import Repository, new_api_key

    url = database_url or f"sqlite+aiosqlite:///{data_dir / 'atoll.db'}"
    data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(url)

    async def mint() -> str:
        engine = db.make_engine(url)
        repo = Repository(db.sessions(engine))
        await repo.ensure_org(org, org)
        key = new_api_key()
        await repo.add_key(org, key)
        await engine.dispose()
        return key

    typer.echo(asyncio.run(mint()))


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


if __name__ == "__main__":
    app()
