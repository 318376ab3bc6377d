"""The top-level client and the transport: configuration, headers, lifecycle."""

from __future__ import annotations

import httpx
import pytest

from atoll import AsyncClient, AsyncTransport, ClientConfig, InvalidArgument

from .._mock import Router, status_json


async def test_transport_sends_auth_and_user_agent() -> None:
    router = Router().on("GET", "/prefix/v1/sandbox/s/", json=status_json())
    async with AsyncClient(
        api_key="secret",
        base_url="http://api.test/prefix/",
        http_client=httpx.AsyncClient(transport=router.transport()),
    ) as client:
        await client.sandboxes.get("s")
    assert router.last.headers["authorization"] == "Bearer secret"
    assert router.last.headers["user-agent"] == "atoll-python/0.1.0"
    assert str(router.last.url) == "http://api.test/prefix/v1/sandbox/s/"


@pytest.mark.parametrize(
    ("key", "auth_header", "bearer", "expected"),
    [
        ("k", "authorization", True, "Bearer k"),
        ("Bearer k", "authorization", True, "Bearer k"),
        ("k", "authorization", False, "k"),
        ("k", "atoll-authorization", False, "k"),
    ],
)
async def test_transport_auth_header_forms(key: str, auth_header: str, bearer: bool, expected: str) -> None:
    router = Router().on("GET", "/x", content=b"ok")
    transport = AsyncTransport(
        key,
        "http://api.test",
        auth_header=auth_header,
        bearer=bearer,
        http_client=httpx.AsyncClient(transport=router.transport()),
    )
    response = await transport.request("GET", "/x", headers={"x-extra": "1"})
    assert response.content == b"ok"
    assert router.last.headers[auth_header] == expected
    assert router.last.headers["x-extra"] == "1"


async def test_transport_accepts_several_expected_statuses() -> None:
    router = Router().on("DELETE", "/x", 202)
    transport = AsyncTransport(
        "k", "http://api.test", http_client=httpx.AsyncClient(transport=router.transport())
    )
    response = await transport.request("DELETE", "/x", expected_status=(202, 204))
    assert response.status_code == 202


async def test_transport_rejects_a_bad_timeout() -> None:
    with pytest.raises(InvalidArgument):
        AsyncTransport("k", "http://api.test", timeout=float("inf"))


async def test_client_closes_only_its_own_http_client() -> None:
    async with AsyncClient(api_key="k") as client:
        pass
    assert client.transport._client.is_closed

    mine = httpx.AsyncClient()
    async with AsyncClient(api_key="k", http_client=mine):
        pass
    assert not mine.is_closed
    await mine.aclose()


async def test_client_takes_config_or_settings_not_both() -> None:
    config = ClientConfig(api_key="k", base_url="http://api.test", timeout=5)
    client = AsyncClient(config=config)
    assert client.config is config
    assert client.transport.timeout == 5.0
    assert client.transport.base_url == "http://api.test"
    with pytest.raises(InvalidArgument) as caught:
        AsyncClient(config=config, api_key="other")
    assert caught.value.field == "config"
    await client.aclose()


async def test_client_resolves_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_API_KEY", "from-env")
    monkeypatch.setenv("ATOLL_SANDBOX_SCHEME", "http")
    async with AsyncClient() as client:
        assert client.config == ClientConfig(api_key="from-env", sandbox_scheme="http")
        assert client.sandboxes.invoke_url("s") == "http://s.sbx.localhost:7701/"
        assert "from-env" not in repr(client)
