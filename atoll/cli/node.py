"""``atoll node``: a cluster node (docs/cluster.md). ``atoll node run`` is ``atoll serve --role
node``: it runs sandboxes on this host and registers and heartbeats into the shared PostgreSQL;
``atoll node list`` shows the cluster's nodes as the database has them; ``atoll node drain``
stops placing new sandboxes on a node (what it runs goes on) and ``atoll node undrain`` takes it
back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from atoll.cli.serve_options import settings_from_options, with_settings_options

app = typer.Typer(help="Cluster nodes (docs/cluster.md).", no_args_is_help=True)
console = Console()
DatabaseUrl = Annotated[
    str | None, typer.Option(help="The cluster's PostgreSQL (env ATOLL_DATABASE_URL).", show_default=False)
]


def register(parent: typer.Typer, serve: Callable[..., None]) -> None:
    """``atoll node`` on ``parent``; ``serve`` is ``atoll serve``'s command (run with role node)."""

    @app.command("run")
    @with_settings_options
    def run(
        *,
        build_template: Annotated[bool, typer.Option(help="Build the default template if missing.")] = True,
        **options: Any,
    ) -> None:
        """Run sandboxes on this host as a node of the cluster (atoll serve --role node)."""
        if options.get("role") not in (None, "node"):
            raise typer.BadParameter("atoll node run is role node; use atoll serve --role ...")
        serve(build_template=build_template, **{**options, "role": "node"})

    parent.add_typer(app, name="node")


def _with_registry(database_url: str | None, use: Callable[[Any], Awaitable[Any]]) -> Any:
    """``use(registry)`` on the cluster's database, run to completion."""
    from atoll.cluster.registry import NodeRegistry
    from atoll.store import db

    url = settings_from_options({"database_url": database_url}).db_url

    async def run() -> Any:
        engine = db.make_engine(url)
        try:
            return await use(NodeRegistry(db.sessions(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


NodeId = Annotated[str, typer.Argument(help="The node's id (atoll node list).")]


@app.command("drain")
def drain(node_id: NodeId, database_url: DatabaseUrl = None) -> None:
    """Place no new sandboxes on the node; what it runs goes on, reached as before."""
    _set_draining(node_id, True, database_url)


@app.command("undrain")
def undrain(node_id: NodeId, database_url: DatabaseUrl = None) -> None:
    """Place new sandboxes on a drained node again."""
    _set_draining(node_id, False, database_url)


def _set_draining(node_id: str, draining: bool, database_url: str | None) -> None:
    state = _with_registry(database_url, lambda registry: registry.set_draining(node_id, draining))
    if state is None:
        console.print(f"[red]no node {node_id!r}[/red] (atoll node list)")
        raise typer.Exit(1)
    wanted = "draining" if draining else "up"
    console.print(
        f"node {node_id}: {wanted}" if state != "down" else f"node {node_id}: down; {wanted} once it is back"
    )


@app.command("list")
def list_nodes(database_url: DatabaseUrl = None) -> None:
    """The cluster's nodes: state, heartbeat, capacity used of the budget, sandboxes held
    (paused among them: a draining node's move away, docs/cluster.md)."""

    async def load(registry: Any) -> tuple[list[Any], dict[str, tuple[int, int]]]:
        return list(await registry.nodes()), await registry.sandbox_counts()

    table = Table(
        "id", "role", "state", "heartbeat (UTC)", "vCPU", "memory MiB", "sandboxes (paused)", "address",
        "reason",
    )  # fmt: skip
    nodes, counts = _with_registry(database_url, load)
    for node in nodes:
        total, paused = counts.get(node.id, (0, 0))
        table.add_row(
            node.id, node.role, node.state, node.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{node.vcpu_used}/{node.vcpu_budget}", f"{node.memory_mib_used}/{node.memory_mib_budget}",
            f"{total} ({paused})", node.address, node.state_reason or "",
        )  # fmt: skip
    console.print(table)
