"""invoke_url / websocket_url: built locally, never a request."""

from __future__ import annotations

import httpx
import pytest

from atoll import InvalidArgument, SandboxData, SandboxesClient, SandboxStatus, Transport


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError("invoke_url must not send anything")


def client(
    sandbox_domain: str | None = None, sandbox_scheme: str = "https"
) -> SandboxesClient[SandboxData | SandboxStatus]:
    http_client = httpx.Client(transport=httpx.MockTransport(never))
    transport = Transport("k", "http://api.test", http_client=http_client)
    return SandboxesClient(transport, sandbox_domain=sandbox_domain, sandbox_scheme=sandbox_scheme)


@pytest.mark.parametrize(
    ("path", "port", "url"),
    [
        ("/", None, "https://sbx-1.sbx.test/"),
        ("/h", 3000, "https://sbx-1-3000.sbx.test/h"),
        ("h?q=1", None, "https://sbx-1.sbx.test/h?q=1"),
        ("", 8080, "https://sbx-1-8080.sbx.test/"),
    ],
)
def test_invoke_url(path: str, port: int | None, url: str) -> None:
    sandboxes = client(sandbox_domain="sbx.test")
    assert sandboxes.invoke_url("sbx-1", path, port=port) == url
    websocket = "wss" + url.removeprefix("https")
    assert sandboxes.websocket_url(SandboxData(id="sbx-1"), path, port=port) == websocket


def test_plain_http_hosts_use_ws() -> None:
    sandboxes = client(sandbox_domain="sbx.localhost:7701", sandbox_scheme="http")
    assert sandboxes.invoke_url("s", "/a", port=1) == "http://s-1.sbx.localhost:7701/a"
    assert sandboxes.websocket_url("s") == "ws://s.sbx.localhost:7701/"


def test_domain_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client().invoke_url("s") == "https://s.sbx.localhost:7701/"
    monkeypatch.setenv("ATOLL_SANDBOX_DOMAIN", "sbx.env.test")
    assert client().invoke_url("s") == "https://s.sbx.env.test/"


def test_an_empty_domain_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sandbox_domain"):
        client(sandbox_domain="").invoke_url("s")


@pytest.mark.parametrize("port", [0, 65536, True, "80"])
def test_bad_ports(port: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client(sandbox_domain="d.test").invoke_url("s", port=port)  # type: ignore[arg-type]
    assert caught.value.field == "port"


def test_bad_scheme() -> None:
    with pytest.raises(InvalidArgument):
        client(sandbox_scheme="ftp")
