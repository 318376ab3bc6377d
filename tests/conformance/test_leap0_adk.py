"""The unchanged ``leap0-adk`` 0.1.0 (Google ADK plugin and tools over the public leap0 SDK) against
a real `atoll serve`: its plugin creates a sandbox of leap0's default code-interpreter template,
reached over TLS through the router, and each tool is called as ADK's runner calls it (no model).
leap0_adk_client.py runs it under .venv-leap0 (installed by `make test`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.server import SANDBOX_DOMAIN, ServerProcess
from tests.services.conftest import ca_file, template_present

pytestmark = [pytest.mark.privileged, pytest.mark.conformance, pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_adk_client.py")
__all__ = ["ca_file"]  # the services suite's fixture: Atoll's CA, for the SDK's https to the sandbox


def run_adk(server: ServerProcess, ca: Path) -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0-adk)"
    done = subprocess.run(
        [
            str(LEAP0_PYTHON),
            str(SCRIPT),
            server.base_url,
            server.api_key,
            f"{SANDBOX_DOMAIN}:{server.router_port}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SSL_CERT_FILE": str(ca)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_plugin_tools_run_code_and_files_then_delete_the_sandbox(
    server: ServerProcess, ca_file: Path
) -> None:
    assert template_present("system--code-interpreter@v0.1.0"), "make test builds the code interpreter"
    seen = run_adk(server, ca_file)
    tools = ["execute_code_in_leap0", "leap0_fs_delete", "leap0_fs_list", "leap0_fs_read", "leap0_fs_write"]
    assert seen["tools"] == tools and seen["declarations"] == tools
    assert seen["first"] == [True, "42", ["/home/user\n"], True]
    assert seen["again"] == [True, "43"]
    assert seen["failed"] == [False, "ZeroDivisionError"]
    assert seen["write"] == {"ok": True, "path": "/home/user/a/notes.txt"}
    assert seen["read_head"] == [True, "one\ntwo\n"]
    assert seen["list"] == [True, ["notes.txt"]]
    assert seen["delete"] == {"ok": True, "path": "/home/user/a"}
    assert seen["read_missing"] == [False, True]
    assert seen["both_ends"] == {"ok": False, "error": "head and tail are mutually exclusive"}
    # the plugin's close() deleted its sandbox
    gone = httpx.get(f"{server.base_url}/v1/sandbox/{seen['sandbox_id']}", headers=server.headers, timeout=30)
    assert gone.status_code == 404, gone.text
