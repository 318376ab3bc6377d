"""``atoll sandbox ssh ID``: make an SSH access for the sandbox (agent-services §4) and run the
OpenSSH client with it. With ``sshpass`` installed the password goes to it through its
environment (never the command line); without, it is printed for you to paste at the prompt."""

from __future__ import annotations

import os
import shutil
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("ssh")(ssh)


def ssh_argv(ssh_command: str, options: list[str], command: list[str]) -> list[str]:
    """``ssh_command`` (``ssh -p PORT USER@HOST``) with ``-o`` options before the destination
    and the command after it."""
    argv = ssh_command.split()
    if len(argv) < 2 or argv[0] != "ssh":
        raise typer.BadParameter(f"the server gave an unexpected ssh_command: {ssh_command!r}")
    extra = [part for option in options for part in ("-o", option)]
    return [*argv[:-1], *extra, argv[-1], *command]


def ssh(
    sandbox_id: str,
    command: Annotated[list[str] | None, typer.Argument(help="A command to run instead of a shell.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("-o", "--option", help="An ssh -o option (repeat).")
    ] = None,
    print_only: Annotated[bool, typer.Option("--print", help="Print the access, do not connect.")] = False,
) -> None:
    """SSH into a sandbox: creates an access (its password is valid until it expires) and runs ssh."""
    from atoll import Client

    with Client() as client:
        access = client.sandboxes.get(sandbox_id).ssh.create_access()
    argv = ssh_argv(access.ssh_command, list(option or []), list(command or []))
    sshpass = shutil.which("sshpass")
    if print_only or shutil.which("ssh") is None:
        print(access.ssh_command)
        print(f"password: {access.password}  (expires {access.expires_at})")
        return
    if sshpass is None:
        console.print(f"password (until {access.expires_at}): [bold]{access.password}[/]")
        os.execvp("ssh", argv)
    os.execve(sshpass, [sshpass, "-e", *argv], {**os.environ, "SSHPASS": access.password})
