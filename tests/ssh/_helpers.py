"""What the SSH tests share: a server of their own with the gateway on a free port, accesses
through the wire, and ``ssh_command`` turned into an ``sshpass ssh`` argv."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests._support.server import ServerProcess, free_port, spare_server

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


@contextlib.contextmanager
def ssh_server(tag: str, *extra_args: str) -> Iterator[ServerProcess]:
    """A spare server with the gateway on a free port, ``ssh_command`` naming 127.0.0.1; its
    sandboxes are deleted and its data directory removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-ssh-", dir="/var/tmp"))
    proc = spare_server(
        data_dir, "--ssh-port", str(free_port()), "--ssh-public-host", "127.0.0.1", *extra_args, tag=tag
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.delete_everything()
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def access(http: httpx.Client, sid: str) -> dict[str, Any]:
    r = http.post(f"/v1/sandbox/{sid}/ssh/access")
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def gateway_port(grant: dict[str, Any]) -> int:
    return int(grant["ssh_command"].split()[2])


def ssh_argv(grant: dict[str, Any], *extra: str) -> list[str]:
    """``ssh_command`` as a person pastes it, with sshpass and a throwaway known_hosts."""
    command = grant["ssh_command"].split()
    assert command[:2] == ["ssh", "-p"] and command[3] == f"{grant['id']}@127.0.0.1", command
    options = [*SSH_OPTIONS, "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    return ["sshpass", "-e", *command[:3], *options, *extra, command[3]]


def ssh_env(grant: dict[str, Any], password: str | None = None) -> dict[str, str]:
    return {**os.environ, "SSHPASS": password if password is not None else grant["password"]}


def run_ssh(
    grant: dict[str, Any], command: str, *extra: str, password: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [*ssh_argv(grant, *extra), command]
    return subprocess.run(argv, capture_output=True, text=True, env=ssh_env(grant, password), timeout=timeout)


class TmuxTerminal:
    """An interactive ``ssh -tt`` in a detached tmux window of ``cols`` x ``rows``: what a person
    at a terminal types and sees (``send``, ``wait_for``), and the window resized."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cols: int, rows: int) -> None:
        self.name = name
        quoted = " ".join(f"'{a}'" for a in command)
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), quoted],
            env=env,
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        ).stdout

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.screen():
            assert time.monotonic() < deadline, self.screen()
            time.sleep(0.2)

    def send(self, line: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, line, "Enter"], check=True)

    def resize(self, cols: int, rows: int) -> None:
        subprocess.run(
            ["tmux", "resize-window", "-t", self.name, "-x", str(cols), "-y", str(rows)], check=True
        )
        time.sleep(0.5)  # the client's window-change request reaches the sandbox

    def wait_closed(self, timeout_s: float = 60) -> None:
        """The pane's ssh exited, so its session went."""
        deadline = time.monotonic() + timeout_s
        while subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, self.screen()
            time.sleep(0.3)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
