"""The sandbox handle: bound operations, in-place updates, process execution, context manager."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from atoll import (
    AsyncClient,
    AsyncSandbox,
    ConflictError,
    InvalidArgument,
    ProcessResult,
    SandboxData,
    SandboxStatus,
)
from atoll.sdk._async._transport import AsyncTransport
from atoll.sdk._async.process import AsyncProcessClient

from .._mock import Router, sandbox_json, status_json

SANDBOX = "/v1/sandbox/sbx-abc123"


def make_client(router: Router, **settings: Any) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
        **settings,
    )


async def created(router: Router, **settings: Any) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json(network_policy={"mode": "deny-all"}))
    return await make_client(router, **settings).sandboxes.create()


async def test_pause_stop_start_update_the_handle_in_place() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{SANDBOX}/pause", 201, json=sandbox_json(state="paused"))
    assert await sandbox.pause() is sandbox
    assert sandbox.state == "paused"
    router.on("POST", f"{SANDBOX}/stop", json=sandbox_json(state="stopped"))
    assert (await sandbox.stop()).state == "stopped"
    router.on("POST", f"{SANDBOX}/start", json=sandbox_json(state="starting"))
    assert (await sandbox.start()).state == "starting"
    assert isinstance(sandbox.data, SandboxData)


async def test_refresh_swaps_in_the_status() -> None:
    router = Router()
    sandbox = await created(router)
    assert sandbox.network_policy == {"mode": "deny-all"}
    router.on("GET", f"{SANDBOX}/", json=status_json(state="paused", vcpu=2))
    assert await sandbox.refresh() is sandbox
    assert isinstance(sandbox.data, SandboxStatus)
    assert (sandbox.state, sandbox.vcpu) == ("paused", 2)
    with pytest.raises(AttributeError):
        _ = sandbox.network_policy
    with pytest.raises(AttributeError):
        _ = sandbox.no_such_field


async def test_handle_urls_and_repr() -> None:
    sandbox = await created(Router())
    assert sandbox.invoke_url("/h", port=3000) == "https://sbx-abc123-3000.sbx.test/h"
    assert sandbox.websocket_url("ws") == "wss://sbx-abc123.sbx.test/ws"
    assert repr(sandbox) == f"{type(sandbox).__name__}(id='sbx-abc123', state='running')"


async def test_plain_http_sandbox_hosts() -> None:
    sandbox = await created(Router(), sandbox_scheme="http")
    assert sandbox.invoke_url() == "http://sbx-abc123.sbx.test/"
    assert sandbox.websocket_url("/x", port=8080) == "ws://sbx-abc123-8080.sbx.test/x"


async def test_context_manager_deletes_and_tolerates_a_gone_sandbox() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("DELETE", f"{SANDBOX}/", 204)
    async with sandbox as inside:
        assert inside is sandbox
    assert (router.last.method, router.last.url.path) == ("DELETE", f"{SANDBOX}/")

    router.on("DELETE", f"{SANDBOX}/", 404, json={"message": "sandbox not found"})
    async with sandbox:
        pass

    router.on("DELETE", f"{SANDBOX}/", 409, json={"message": "sandbox is pausing"})
    with pytest.raises(ConflictError):
        async with sandbox:
            pass


async def test_process_execute_sends_envs_and_parses_the_result() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{SANDBOX}/process/execute", json={"exit_code": 3, "stdout": "hi\n", "stderr": "e\n"})
    result = await sandbox.process.execute(command="echo hi; exit 3", cwd="/tmp", env={"X": "y"}, timeout=5)
    assert router.last_json() == {
        "command": "echo hi; exit 3",
        "cwd": "/tmp",
        "envs": {"X": "y"},
        "timeout": 5,
    }
    assert result == ProcessResult(exit_code=3, stdout="hi\n", stderr="e\n")

    await sandbox.process.execute(command="true")
    assert router.last_json() == {"command": "true"}


async def test_process_result_is_parsed_leniently() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{SANDBOX}/process/execute", json={"stdout": "x"})
    assert await sandbox.process.execute(command="x") == ProcessResult(exit_code=0, stdout="x", stderr="")


async def test_process_http_timeout_outlives_the_command() -> None:
    router = Router().on("POST", f"{SANDBOX}/process/execute", json={"exit_code": 0})
    transport = AsyncTransport(
        "k", "http://api.test", timeout=60, http_client=httpx.AsyncClient(transport=router.transport())
    )
    process = AsyncProcessClient(transport)

    await process.execute("sbx-abc123", command="sleep 1")
    assert router.last_timeout() == 60.0
    await process.execute("sbx-abc123", command="sleep 1", timeout=5)
    assert router.last_timeout() == 60.0  # the client default already covers 5 + 10 s
    await process.execute("sbx-abc123", command="sleep 100", timeout=100)
    assert router.last_timeout() == 110.0
    await process.execute("sbx-abc123", command="sleep 100", timeout=100, http_timeout=7)
    assert router.last_timeout() == 7.0  # an explicit HTTP timeout is the caller's choice


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"command": ""}, "command"),
        ({"command": "ls", "cwd": ""}, "cwd"),
        ({"command": "ls", "env": {"A": 1}}, "env['A']"),
        ({"command": "ls", "timeout": 0}, "timeout"),
        ({"command": "ls", "timeout": 28801}, "timeout"),
    ],
)
async def test_process_rejects_bad_arguments_before_sending(kwargs: dict[str, Any], field: str) -> None:
    router = Router()
    sandbox = await created(router)
    sent = len(router.requests)
    with pytest.raises(InvalidArgument) as caught:
        await sandbox.process.execute(**kwargs)
    assert caught.value.field == field
    assert len(router.requests) == sent
