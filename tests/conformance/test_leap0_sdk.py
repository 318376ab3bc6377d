"""The public leap0 SDK (PyPI leap0==0.8.0, Python 3.12 virtualenv made by `make test`) works
against a real `atoll serve` unchanged."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.conformance, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_client.py")


def leap0(server: ServerProcess, check: str, *, key: str | None = None, variant: str = "bearer") -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    done = subprocess.run(
        [str(LEAP0_PYTHON), str(SCRIPT), server.base_url, key or server.api_key, check, variant],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_create_execute_get_list_pause_delete(server: ServerProcess) -> None:
    seen = leap0(server, "lifecycle")
    assert seen["id"] and seen["state"] == "running"
    assert (seen["vcpu"], seen["memory"], seen["timeout"]) == (1, 1024, 300)
    assert seen["template_id"]
    dt.datetime.fromisoformat(seen["created_at"])
    assert seen["exec"] == [3, "hi\n", "e\n"]
    assert seen["env"] == "y\n"
    assert seen["get_type"] == "SandboxStatus"
    assert seen["get_state"] == "running"
    assert seen["listed"] is True and seen["total_items"] >= 1
    assert seen["paused_state"] == "paused"
    assert seen["second_pause"] == "Leap0ConflictError"
    assert seen["after_resume"] == "back\n"
    assert seen["after_delete"] == ["not found", 404, True]


def test_env_vars_and_network_policy_echo(server: ServerProcess) -> None:
    assert leap0(server, "env_vars") == {"stdout": "1\n", "policy": {"mode": "allow-all"}}


def test_default_template_is_agent_ready(server: ServerProcess) -> None:
    """leap0's examples use cwd="/home/user", python, pip and git; LangChain prints a lot."""
    seen = leap0(server, "home_user")
    assert seen["tools"] == [
        0,
        ["Python 3.11.2", "pip", "git", "v", "10", "curl", "wget", "unzip", "pyright-langserver",
         "typescript-language-server", "/home/user"],
    ]  # fmt: skip
    assert seen["big"] == [0, 100001]
    assert seen["venv"] == [0, "pip\n"]


def test_invalid_arguments(server: ServerProcess) -> None:
    # the SDK rejects these itself (status None); the server rejects an unknown template with 400
    assert leap0(server, "validation") == {"vcpu": None, "memory": None, "timeout": None, "template": 400}


def test_auth_variants(server: ServerProcess) -> None:
    assert leap0(server, "bad_key", key="wrong-key") == {"status": 401}
    assert leap0(server, "bad_key", variant="raw-leap0-header") == {"status": "ok"}
