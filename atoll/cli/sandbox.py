"""``atoll sandbox ...``: the SDK from the shell (ATOLL_API_KEY / ATOLL_BASE_URL configure it)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Create, inspect and drive sandboxes.", no_args_is_help=True)
console = Console()


def _client() -> Any:
    from atoll import Client

    return Client()


def _show(data: Any) -> None:
    raw = dataclasses.asdict(data) if dataclasses.is_dataclass(data) and not isinstance(data, type) else data
    console.print_json(json.dumps(raw, default=str))


@app.command()
def create(
    template: Annotated[str, typer.Option("--template", "-t")] = "system/debian:bookworm",
    vcpu: int = 1,
    memory_mib: Annotated[int, typer.Option("--memory")] = 1024,
    timeout_min: Annotated[int, typer.Option("--timeout")] = 5,
    auto_pause: bool = False,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeat)")] = None,
) -> None:
    """Create a sandbox and print it."""
    env_vars = dict(item.split("=", 1) for item in env or [])
    with _client() as client:
        sandbox = client.sandboxes.create(
            template_name=template,
            vcpu=vcpu,
            memory_mib=memory_mib,
            timeout_min=timeout_min,
            auto_pause=auto_pause,
            env_vars=env_vars or None,
        )
        _show(sandbox.data)


@app.command("list")
def list_(state: Annotated[str | None, typer.Option()] = None) -> None:
    """List this organisation's sandboxes."""
    with _client() as client:
        listing = client.sandboxes.list(state=state, page_size=100)
    table = Table("id", "state", "template", "created")
    for item in listing.items:
        table.add_row(item.id, str(item.state), item.template_id, item.created_at)
    console.print(table)


@app.command()
def get(sandbox_id: str) -> None:
    """Show a sandbox."""
    with _client() as client:
        _show(client.sandboxes.get(sandbox_id).data)


@app.command("exec")
def exec_(
    sandbox_id: str,
    command: str,
    cwd: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[int | None, typer.Option(help="Seconds.")] = None,
) -> None:
    """Run COMMAND with /bin/sh -c inside the sandbox; exits with its exit code."""
    with _client() as client:
        result = client.sandboxes.get(sandbox_id).process.execute(command=command, cwd=cwd, timeout=timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    raise typer.Exit(result.exit_code)


@app.command()
def pause(sandbox_id: str) -> None:
    """Pause a running sandbox (it resumes on the next request)."""
    with _client() as client:
        _show(client.sandboxes.pause(sandbox_id).data)


@app.command()
def delete(sandbox_id: str) -> None:
    """Delete a sandbox and everything it holds."""
    with _client() as client:
        client.sandboxes.delete(sandbox_id)
    console.print(f"deleted {sandbox_id}")


@app.command()
def shell(
    sandbox_id: str,
    cwd: Annotated[str | None, typer.Option(help="Directory to start in (default: the workdir).")] = None,
) -> None:
    """Open an interactive terminal in the sandbox (exit the shell to leave)."""
    from atoll.cli.shell import run_shell

    with _client() as client:
        code = run_shell(client.sandboxes.get(sandbox_id), cwd=cwd)
    raise typer.Exit(code)
