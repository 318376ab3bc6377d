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

from atoll.cli import node as node_commands
from atoll.cli import sandbox as sandbox_commands
from atoll.cli import ssh as ssh_commands
from atoll.cli import templates as template_commands
from atoll.cli.serve_options import settings_from_options, with_settings_options

app = typer.Typer(help="Atoll: self-hosted sandboxes for AI agents.", no_args_is_help=True)
template_app = typer.Typer(help="Build and list templates.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys (run on the server host).", no_args_is_help=True)
app.add_typer(template_app, name="template")
template_commands.register(template_app)  # create, catalog, rename, delete (through the API)
app.add_typer(sandbox_commands.app, name="sandbox")
ssh_commands.register(sandbox_commands.app)  # atoll sandbox ssh ID
app.add_typer(keys_app, name="keys")
console = Console()

# None: the setting's (atoll.server.settings: its ATOLL_ variable, else its default)
DataDir = Annotated[Path | None, typer.Option(help="State directory (env ATOLL_DATA_DIR).")]
TemplatesDir = Annotated[Path | None, typer.Option(help="Template cache (env ATOLL_TEMPLATES_DIR).")]


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
@with_settings_options
def serve(
    *,
    build_template: Annotated[bool, typer.Option(help="Build the default template if missing.")] = True,
    **options: Any,
) -> None:
    """Run the control plane on HOST:PORT (every option is a setting of atoll.server.settings:
    given here, else from its ATOLL_ variable, else its default)."""
    import uvicorn

    from atoll._conn_guard import configure_process_guard, raise_fd_limit
    from atoll.server.app import create_app
    from atoll.server.limits import LimitedHttpToolsProtocol

    settings = settings_from_options(options)
    # an API replica runs no sandbox: no privilege, and no template of its own (docs/cluster.md)
    if settings.runs_sandboxes and os.geteuid() != 0:
        raise typer.BadParameter("atoll serve manages namespaces, cgroups and nftables: run it as root")
    if build_template and settings.runs_sandboxes:
        _build_default_template(settings.templates_dir)
    if settings.build_templates:
        from atoll.server.template_builds import log_to_stderr

        log_to_stderr(settings.log_level)
    console.print(f"Atoll API on [bold]http://{settings.host}:{settings.port}[/] (OpenAPI at /docs)")
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
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
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
    templates_dir = settings_from_options({"templates_dir": templates_dir}).templates_dir
    template_commands.build_system(names, templates_dir, force=force)


@template_app.command("list")
def template_list(templates_dir: TemplatesDir = None) -> None:
    """Templates cached on this host."""
    from atoll.templates.registry import TemplateRegistry

    registry = TemplateRegistry(settings_from_options({"templates_dir": templates_dir}).templates_dir)
    table = Table("name", "id", "PORT")
    for name in registry.names():
        template = registry.get(name)
        if template is not None:
            table.add_row(template.name, template.id, str(template.port))
    console.print(table)


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation id; created when new.")] = "org_default",
    name: Annotated[str | None, typer.Option(help="What to call it (the dashboard shows it).")] = None,
    data_dir: DataDir = None,
    database_url: Annotated[str | None, typer.Option(help="(env ATOLL_DATABASE_URL)")] = None,
) -> None:
    """Mint an API key for an organisation and print it (only its hash is stored)."""
    from atoll.store import db
    from atoll.store.models import KEY_NAME_MAX_CHARS
    from atoll.store.repo import Repository, new_api_key

    if name is not None and len(name) > KEY_NAME_MAX_CHARS:
        raise typer.BadParameter(f"at most {KEY_NAME_MAX_CHARS} characters", param_hint="--name")

    settings = settings_from_options({"data_dir": data_dir, "database_url": database_url})
    url = settings.db_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(url)

    async def mint() -> str:
        engine = db.make_engine(url)
        repo = Repository(db.sessions(engine))
        await repo.ensure_org(org, org)
        key = new_api_key()
        await repo.add_key(org, key, name or None)
        await engine.dispose()
        return key

    typer.echo(asyncio.run(mint()))


node_commands.register(app, serve)  # atoll node run | list (docs/cluster.md)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


if __name__ == "__main__":
    app()
