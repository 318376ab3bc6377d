"""What the SSH tests share: a server of their own with the gateway on a free port, accesses
through the wire, and ``ssh_command`` turned into an ``sshpass ssh`` argv."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
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
