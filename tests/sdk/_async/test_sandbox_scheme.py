"""The sandbox URL scheme: the configured one, else the one the server announces on
``/v1/health`` (asked once, before the first sandbox is handed out), else the default."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from atoll import AsyncClient, ClientConfig, InvalidArgument

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


def health_requests(router: Router) -> int:
    return sum(r.url.path == "/v1/health" for r in router.requests)


def announcing(scheme: str) -> Router:
    return (
        Router()
        .on("GET", "/v1/health", json={"status": "ok", "sandbox_url": {"scheme": scheme, "domain": "d:1"}})
        .on("POST", "/v1/sandbox", 201, json=sandbox_json())
        .on("GET", f"{SANDBOX}/", json=status_json())
    )


async def test_the_announced_scheme_is_used_and_asked_for_once() -> None:
    router = announcing("http")
    async with make_client(router) as client:
        sandbox = await client.sandboxes.create()
        assert sandbox.invoke_url("/x") == "http://sbx-abc123.sbx.test/x"
        assert sandbox.websocket_url("/x") == "ws://sbx-abc123.sbx.test/x"
        await client.sandboxes.get("sbx-abc123")
        await sandbox.refresh()
        assert await client.sandboxes.sandbox_scheme() == "http"
    assert health_requests(router) == 1
    # asked before the call that hands out the sandbox, so that one is the last request
    assert [r.url.path for r in router.requests[:2]] == ["/v1/health", "/v1/sandbox"]


async def test_asked_on_demand_too() -> None:
    router = announcing("http")
    async with make_client(router) as client:
        assert client.sandboxes.invoke_url("s") == "https://s.sbx.test/"  # not asked yet: the default
        assert await client.sandboxes.sandbox_scheme() == "http"
        assert client.sandboxes.invoke_url("s") == "http://s.sbx.test/"
    assert health_requests(router) == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json={"message": "not found"}),
        httpx.Response(200, json={"status": "ok"}),  # an older server: says nothing
        httpx.Response(200, json={"sandbox_url": {"scheme": "gopher"}}),
        httpx.Response(200, json={"sandbox_url": "https"}),
        httpx.Response(200, content=b"not json"),
        httpx.ConnectError("unreachable"),
    ],
)
async def test_the_default_when_the_server_does_not_say(answer: httpx.Response | Exception) -> None:
    router = Router().on("POST", "/v1/sandbox", 201, json=sandbox_json())
    if isinstance(answer, Exception):
        router.fail("GET", "/v1/health", answer)
    else:
        router.handle("GET", "/v1/health", lambda _: answer)
    async with make_client(router) as client:
        sandbox = await client.sandboxes.create()
        assert sandbox.invoke_url() == "https://sbx-abc123.sbx.test/"
        await client.sandboxes.create()
    assert health_requests(router) == 1  # not asked again after a failure either


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_a_configured_scheme_wins_and_nothing_is_asked(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = announcing("http")
    if how == "environment":
        monkeypatch.setenv("ATOLL_SANDBOX_SCHEME", "https")
        client = make_client(router)
    else:
        client = make_client(router, sandbox_scheme="https")
    async with client:
        assert client.config.sandbox_scheme_given
        sandbox = await client.sandboxes.create()
        assert sandbox.invoke_url() == "https://sbx-abc123.sbx.test/"
        assert await client.sandboxes.sandbox_scheme() == "https"
    assert health_requests(router) == 0


def test_config_says_whether_the_scheme_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    left = ClientConfig(api_key="k")
    assert (left.sandbox_scheme, left.sandbox_scheme_given) == ("https", False)
    given = ClientConfig(api_key="k", sandbox_scheme="https")
    assert (given.sandbox_scheme, given.sandbox_scheme_given) == ("https", True)
    assert left != given  # they behave differently
    monkeypatch.setenv("ATOLL_SANDBOX_SCHEME", "http")
    assert ClientConfig(api_key="k").sandbox_scheme_given


async def test_bad_input_sends_nothing_not_even_the_question() -> None:
    router = announcing("http")
    async with make_client(router) as client:
        for call in (
            client.sandboxes.get,
            client.sandboxes.pause,
            client.sandboxes.stop,
            client.sandboxes.start,
        ):
            with pytest.raises(InvalidArgument):
                await call("  ")
            with pytest.raises(InvalidArgument):
                await call("sbx-abc123", http_timeout=-1)
        with pytest.raises(InvalidArgument):
            await client.sandboxes.create(vcpu=0)
    assert router.requests == []
