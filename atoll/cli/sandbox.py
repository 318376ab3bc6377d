"""``atoll sandbox ...``: the SDK from the shell (ATOLL_API_KEY / ATOLL_BASE_URL configure it)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
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
    background: Annotated[bool, typer.Option(help="Start it in the background; print its pid.")] = False,
    tag: Annotated[str | None, typer.Option(help="A label for a background process.")] = None,
) -> None:
    """Run COMMAND with /bin/sh -c inside the sandbox, its output shown as it comes; exits with
    its exit code (with --background: prints the pid and returns at once)."""
    from atoll.cli import processes

    with _client() as client:
        sandbox = client.sandboxes.get(sandbox_id)
        if background:
            print(processes.start_background(sandbox, command, cwd=cwd, tag=tag))
            return
        code = processes.exec_streamed(sandbox, command, cwd=cwd, timeout=timeout)
    raise typer.Exit(code)


@app.command()
def ps(sandbox_id: str) -> None:
    """List the sandbox's background processes (running and recently ended)."""
    from atoll.cli import processes

    with _client() as client:
        processes.show_processes(client.sandboxes.get(sandbox_id), console)


@app.command()
def logs(
    sandbox_id: str,
    pid: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following until it ends.")] = False,
) -> None:
    """Show a background process's output (what the sandbox kept of it)."""
    from atoll.cli import processes

    with _client() as client:
        code = processes.show_logs(client.sandboxes.get(sandbox_id), pid, follow=follow)
    raise typer.Exit(code if follow else 0)


@app.command()
def kill(
    sandbox_id: str,
    pid: int,
    signal: Annotated[str, typer.Option("--signal", "-s", help="SIGTERM, SIGINT, SIGHUP, ...")] = "SIGKILL",
) -> None:
    """Send a signal to a background process's whole session (default SIGKILL)."""
    with _client() as client:
        client.sandboxes.get(sandbox_id).process.signal(pid, signal)


@app.command()
def top(
    sandbox_id: str,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the current view and exit.")] = False,
) -> None:
    """Show the sandbox's CPU, memory, disk, network and pids, live (Ctrl-C to leave)."""
    from atoll.cli import sandbox_top

    with _client() as client:
        sandbox_top.top(client.sandboxes.get(sandbox_id), console, interval_s=interval, once=once)


@app.command("run-code")
def run_code(
    sandbox_id: str,
    code: Annotated[str, typer.Argument(help="The code to run; '-' reads it from stdin.")],
    language: Annotated[str, typer.Option("--language", "-l", help="python, typescript, javascript, ...")] = (
        "python"
    ),
    context: Annotated[
        str | None, typer.Option("--context", help="Context id to run in (default: the language's own).")
    ] = None,
    timeout_ms: Annotated[int | None, typer.Option(help="The code's time limit (default 30000).")] = None,
    stream: Annotated[
        bool, typer.Option(help="Show output as it is printed (no results or images: the stream has none).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
    save_images: Annotated[
        Path | None, typer.Option(file_okay=False, help="Write images and PDFs into this directory.")
    ] = None,
) -> None:
    """Run CODE in the sandbox's code interpreter (a sandbox made from the
    system/code-interpreter:v0.1.0 template). Exits 1 if the code raised, 2 if it could not run."""
    from atoll.cli.run_code import run_code as run

    source = sys.stdin.read() if code == "-" else code
    with _client() as client:
        status = run(
            client,
            sandbox_id,
            source,
            language=language,
            context_id=context,
            timeout_ms=timeout_ms,
            stream=stream,
            as_json=json_output,
            save_dir=save_images,
        )
    raise typer.Exit(status)


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
def desktop(
    sandbox_id: str,
    presign: Annotated[
        bool, typer.Option(help="A presigned URL a browser opens without the API key (default).")
    ] = True,
    expires_in: Annotated[int, typer.Option(min=1, help="Seconds the presigned URL stays valid.")] = 3600,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open it in a browser if any.")] = (
        True
    ),
) -> None:
    """Print the URL of the sandbox's desktop (noVNC; a sandbox made from system/desktop:v0.1.0)
    and open it in a browser when one is available."""
    from atoll.cli.desktop import desktop_url, open_in_browser

    with _client() as client:
        url = desktop_url(client, sandbox_id, presign=presign, expires_in_s=expires_in)
    print(url)
    if open_browser:
        open_in_browser(url)


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
