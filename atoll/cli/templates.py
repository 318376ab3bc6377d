"""``atoll template create|catalog|rename|delete``: an organisation's templates through the API
(ATOLL_API_KEY / ATOLL_BASE_URL configure the client). Imports show pull and unpack progress.
``build_system`` builds system templates on this host (``atoll template build``) with a bar."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
IMPORT_HTTP_TIMEOUT_S = 3600.0


def register(app: typer.Typer) -> None:
    app.command("create")(create)
    app.command("catalog")(catalog)
    app.command("rename")(rename)
    app.command("delete")(delete)


def build_system(names: list[str], templates_dir: Path, *, force: bool = False) -> None:
    """Build the system templates called ``names`` (with or without tag) unless current."""
    from atoll.templates.registry import TemplateRegistry
    from atoll.templates.system import find

    try:
        wanted = [find(name) for name in names]
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    registry = TemplateRegistry(templates_dir)
    for template in wanted:
        if template.is_current(registry) and not force:
            console.print(f"template [bold]{template.name}[/] is cached in {templates_dir}")
            continue
        started = time.monotonic()
        with Progress(
            TextColumn("[bold]building " + template.name),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}% {task.description}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("starting", total=1.0)

            def report(fraction: float, phase: str, task: TaskID = task) -> None:
                progress.update(task, completed=fraction, description=phase)

            template.build(registry, force=force, on_progress=report)
        console.print(f"[green]built[/] {template.name} in {time.monotonic() - started:.0f} s")


def create(
    name: str,
    uri: Annotated[
        str, typer.Argument(help="docker://REF, REF, or oci-archive:/docker-archive:/oci:/dir: PATH")
    ],
    username: Annotated[str | None, typer.Option(help="Registry user (basic auth).")] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="ATOLL_REGISTRY_PASSWORD", help="Registry password (prompted if absent)."),
    ] = None,
) -> None:
    """Import a container image as a template named NAME, showing pull and unpack progress."""
    from atoll import Client

    credentials = None
    if username is not None:
        if password is None:
            password = typer.prompt("registry password", hide_input=True)
        credentials = {"type": "basic", "username": username, "password": password}
    with Client() as client, console.status(f"importing {uri}") as status:

        def progress(phase: str, message: str) -> None:
            status.update(f"[bold]{phase}[/] {message}")
            if message.startswith(("Copying", "Writing", "unpacking")):
                console.print(f"  [dim]{phase}[/] {message}")

        template = client.templates.create(
            name=name,
            uri=uri,
            credentials=credentials,
            on_progress=progress,
            http_timeout=IMPORT_HTTP_TIMEOUT_S,
        )
    console.print(f"[green]imported[/] {template.name} ({template.id})")
    console.print_json(json.dumps(dataclasses.asdict(template)))


def catalog() -> None:
    """The templates this organisation can boot: the system ones and its own."""
    from atoll import Client

    with Client() as client:
        templates = client.templates.list()
    table = Table("name", "id", "digest", "system")
    for template in templates:
        table.add_row(template.name, template.id, template.digest[:19], "yes" if template.is_system else "")
    console.print(table)


def rename(template_id: str, name: str) -> None:
    """Rename one of this organisation's templates."""
    from atoll import Client

    with Client() as client:
        client.templates.rename(template_id, name=name)
    console.print(f"renamed {template_id} to {name}")


def delete(template_id: str) -> None:
    """Delete a template no sandbox uses any more."""
    from atoll import Client

    with Client() as client:
        client.templates.delete(template_id)
    console.print(f"deleted {template_id}")
