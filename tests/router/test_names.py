"""Routing information from ``Host`` and headers, and the URLs the server hands out."""

from __future__ import annotations

import pytest

from atoll._exceptions import BadRequestError, NotFoundError
from atoll.router import Names, SandboxTarget, TokenTarget, public_url
from atoll.router._presigned import hash_token, new_token

names = Names("sbx.localhost")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"sbxab12.sbx.localhost", SandboxTarget("sbxab12", None)),
        (b"sbxab12.sbx.localhost:7701", SandboxTarget("sbxab12", None)),
        (b"sbxab12-3000.sbx.localhost:7701", SandboxTarget("sbxab12", 3000)),
        (b"SBXAB12-3000.SBX.LOCALHOST.", SandboxTarget("sbxab12", 3000)),
        (b"atpabc234.sbx.localhost:7701", TokenTarget("atpabc234")),
    ],
)
def test_host_routing(host: bytes, expected: object) -> None:
    assert names.target(host) == expected
    assert names.target(host) == expected  # and from the cache


@pytest.mark.parametrize(
    "host",
    [None, b"", b"sbx.localhost", b"a.b.sbx.localhost", b"example.com", b"[::1]:7701", b"x.sbx.localhostx"],
)
def test_not_a_sandbox_host(host: bytes | None) -> None:
    with pytest.raises(NotFoundError):
        names.target(host)


@pytest.mark.parametrize(
    "host", [b"sbxab-0.sbx.localhost", b"sbxab-65536.sbx.localhost", b"sbxab-x.sbx.localhost"]
)
def test_bad_port(host: bytes) -> None:
    with pytest.raises(BadRequestError):
        names.target(host)


def test_header_routing_wins_on_any_host() -> None:
    assert names.target(b"127.0.0.1:7701", b"sbxab12", None) == SandboxTarget("sbxab12", None)
    assert names.target(b"anything", b" SbxAb12 ", b"8080") == SandboxTarget("sbxab12", 8080)
    assert names.target(b"sbxab12.sbx.localhost", None, b"9000") == SandboxTarget("sbxab12", 9000)
    with pytest.raises(BadRequestError):
        names.target(b"x", b"no/slash", None)
    with pytest.raises(BadRequestError):
        names.target(b"x", b"sbxab12", b"99999")


def test_separate_presigned_domain() -> None:
    split = Names("sbx.example.com", "p.example.com")
    assert split.target(b"anylabel.p.example.com") == TokenTarget("anylabel")
    assert split.target(b"sbxab12.sbx.example.com") == SandboxTarget("sbxab12", None)


def test_tokens_and_urls() -> None:
    token = new_token()
    assert token.startswith("atp") and token == token.lower() and len(token) == 35
    assert names.target(f"{token}.sbx.localhost".encode()) == TokenTarget(token)
    assert len(hash_token(token)) == 64 and hash_token(token) != token
    assert public_url("http", "sbxab", "sbx.localhost", 7701, "/x") == "http://sbxab.sbx.localhost:7701/x"
    assert public_url("https", "sbxab", "sbx.example.com", 443) == "https://sbxab.sbx.example.com/"
    assert public_url("http", "sbxab", "sbx.example.com", 80) == "http://sbxab.sbx.example.com/"
