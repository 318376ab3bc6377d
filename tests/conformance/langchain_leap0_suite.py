"""LangChain's standard sandbox suite (langchain-tests' ``SandboxIntegrationTests``) run on the
unchanged ``langchain-leap0`` backend (deepagents' ``BaseSandbox`` over the public leap0 SDK)
against a real Atoll server.

Collected only by the pytest of .venv-leap0 (Python 3.12), started by test_langchain_leap0.py
with ATOLL_URL and ATOLL_KEY set; the project's own pytest never imports it (no ``test_`` prefix).
No model is called: the suite drives the backend's execute, upload, download, ls, read, write,
edit, grep and glob directly."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from deepagents.backends.protocol import SandboxBackendProtocol
from langchain_leap0 import Leap0Sandbox
from langchain_tests.integration_tests import SandboxIntegrationTests
from leap0 import Leap0Client


class TestLeap0OnAtollStandard(SandboxIntegrationTests):
    @pytest.fixture(scope="class")
    def sandbox(self) -> Iterator[SandboxBackendProtocol]:
        client = Leap0Client(
            api_key=os.environ["ATOLL_KEY"], base_url=os.environ["ATOLL_URL"], sandbox_domain="sbx.local"
        )
        handle = client.sandboxes.create()
        try:
            yield Leap0Sandbox(client=client, sandbox=handle, timeout=120)
        finally:
            handle.delete()
            client.close()

    def test_execute_large_stdout_payload(self, sandbox_backend: SandboxBackendProtocol) -> None:
        """The large-output case of langchain-tests >= 1.1.6 (which needs deepagents >= 0.5, so
        cannot be installed beside langchain-leap0 0.2.0), its command and assertions verbatim."""
        command = "python -c \"import sys; sys.stdout.write('x' * (500 * 1024))\""
        result = sandbox_backend.execute(command)

        assert result.exit_code == 0
        assert result.truncated is False
        assert len(result.output) >= 500 * 1024
        assert result.output.startswith("x")


def test_home_user_is_the_backend_default_directory() -> None:
    """leap0's examples run in cwd="/home/user"; the backend's commands start there too."""
    client = Leap0Client(
        api_key=os.environ["ATOLL_KEY"], base_url=os.environ["ATOLL_URL"], sandbox_domain="sbx.local"
    )
    handle = client.sandboxes.create()
    try:
        backend = Leap0Sandbox(client=client, sandbox=handle)
        assert backend.execute("pwd").output.strip() == "/home/user"
        ran = handle.process.execute(command="python -c 'import os; print(os.getcwd())'", cwd="/home/user")
        assert (ran.exit_code, ran.stdout) == (0, "/home/user\n")
        backend.write("/home/user/notes.md", "hello\n")
        assert [e["path"] for e in backend.ls_info("/home/user")] == ["/home/user/notes.md"]
    finally:
        handle.delete()
        client.close()
