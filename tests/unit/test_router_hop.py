"""The router's hop to another node's router (atoll.router._hop, _lookup): when a request's
internal headers are trusted, what a replica asserts, and where its look-up sends a sandbox
another node runs (its router, never the sandbox's address; a down node or a missing token
answered, never connected to). Pure logic: the end-to-end hop is tests/cluster/test_router_forwarding.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from atoll._exceptions import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NodeUnreachable,
    NotFoundError,
    UnavailableError,
)
from atoll.router import Destination, Grant, Names, SandboxLookup, SandboxTarget, TokenTarget, TrustedTarget
from atoll.router._hop import Hop, trusted_target, with_hop
from atoll.router._lookup import router_at
from atoll.router._request import STRIPPED, Exchange, RequestReader

TOKEN = "a-cluster-token-of-32-characters"


def _trusted(
    token: bytes | None,
    sandbox: bytes | None = b"sbxa",
    org: bytes | None = b"org1",
    port: bytes | None = None,
) -> TrustedTarget:
    return trusted_target(TOKEN.encode(), token=token, sandbox_id=sandbox, org_id=org, port=port)


def test_the_hop_headers_are_trusted_only_with_the_cluster_token() -> None:
    assert _trusted(TOKEN.encode()) == TrustedTarget("sbxa", None, "org1")
    assert _trusted(TOKEN.encode(), port=b"3000") == TrustedTarget("sbxa", 3000, "org1")
    for wrong in (None, b"", b"nope", TOKEN.encode()[:-1], TOKEN.encode() + b"x"):
        with pytest.raises(AuthenticationError):
            _trusted(wrong)
    with pytest.raises(AuthenticationError):  # a router without a token trusts no hop at all
        trusted_target(None, token=b"", sandbox_id=b"sbxa", org_id=b"org1", port=None)
    with pytest.raises(AuthenticationError):
        trusted_target(b"", token=b"", sandbox_id=b"sbxa", org_id=b"org1", port=None)
    with pytest.raises(BadRequestError):
        _trusted(TOKEN.encode(), sandbox=None)
    with pytest.raises(BadRequestError):
        _trusted(TOKEN.encode(), org=None)
    with pytest.raises(BadRequestError):
        _trusted(TOKEN.encode(), sandbox=b"../x")
    with pytest.raises(BadRequestError):
        _trusted(TOKEN.encode(), port=b"70000")
    with pytest.raises(BadRequestError):
        _trusted(TOKEN.encode(), org=b"x" * 65)


def test_what_a_replica_asserts_round_trips() -> None:
    head = b"GET / HTTP/1.1\r\nHost: sbxa.sbx.localhost\r\n\r\n"
    sent = with_hop(head, Hop("node-a", "org with spaces/ü", 3000), "sbxa", TOKEN)
    assert sent.startswith(head[:-2]) and sent.endswith(b"\r\n\r\n")
    got = _read(sent, TOKEN.encode())
    assert got.error is None and got.target == TrustedTarget("sbxa", 3000, "org with spaces/ü")
    assert b"atoll" not in got.head.lower().replace(b"sbx.localhost", b"")  # nothing internal goes on
    presigned = _read(with_hop(head, Hop("node-a", "org1", 3000, "atpabc"), "sbxa", TOKEN), TOKEN.encode())
    assert presigned.target == TrustedTarget("sbxa", 3000, "org1", "atpabc")
    assert b"atpabc" not in presigned.head


def _read(raw: bytes, token: bytes | None) -> Exchange:
    @dataclass
    class Sink:
        peer: bytes = b"10.0.0.9"
        heads: list[Exchange] = field(default_factory=list)

        def request_head(self, ex: Exchange) -> None:
            self.heads.append(ex)

        def request_body(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None: ...

        def request_end(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None: ...

    sink = Sink()
    reader = RequestReader(sink, Names("sbx.localhost"), b"X-Forwarded-Proto: http\r\n", token)
    reader.parser.feed_data(raw)
    return sink.heads[0]


def test_a_router_strips_the_hop_headers_and_refuses_forged_ones() -> None:
    assert {
        b"x-atoll-cluster-token",
        b"x-atoll-hop-sandbox",
        b"x-atoll-hop-org",
        b"x-atoll-hop-port",
    } <= STRIPPED
    forged = (
        b"GET / HTTP/1.1\r\nHost: sbxa.sbx.localhost\r\nAuthorization: Bearer k1\r\n"
        b"X-Atoll-Hop-Sandbox: sbxb\r\nX-Atoll-Hop-Org: org2\r\n\r\n"
    )
    for token in (TOKEN.encode(), None):  # a key does not make forged internal headers good
        got = _read(forged, token)
        assert isinstance(got.error, AuthenticationError) and got.target is None
    wrong = forged.replace(b"\r\n\r\n", b"\r\nX-Atoll-Cluster-Token: guessed\r\n\r\n")
    assert isinstance(_read(wrong, TOKEN.encode()).error, AuthenticationError)
    plain = _read(b"GET / HTTP/1.1\r\nHost: sbxa-3000.sbx.localhost\r\n\r\n", TOKEN.encode())
    assert plain.error is None and plain.target == SandboxTarget("sbxa", 3000)


def test_router_addresses() -> None:
    assert router_at("http://10.0.0.2:7701") == ("10.0.0.2", 7701)
    assert router_at("http://[::1]:7701") == ("::1", 7701)
    for unusable in (None, "", "10.0.0.2:7701", "https://n:1", "http://n", "http://n:99999"):
        assert router_at(unusable) is None, unusable


def test_a_destination_at_another_port() -> None:
    local = Destination("10.9.0.2", 8080, "sbxa")
    assert local.at_port(None) is local and local.at_port(3000) == Destination("10.9.0.2", 3000, "sbxa")
    remote = Destination("10.0.0.2", 7701, "sbxa", Hop("node-a", "org1", None))
    assert remote.at_port(3000) == Destination("10.0.0.2", 7701, "sbxa", Hop("node-a", "org1", 3000))
    assert remote.at_port(7701).hop == Hop("node-a", "org1", 7701)  # the sandbox's port, not the router's


# the look-up in a cluster ---------------------------------------------------------------------
@dataclass
class Row:
    id: str
    org_id: str
    state: str
    node_id: str | None = "here"


@dataclass
class Home:
    node_id: str
    router_address: str | None = "http://10.0.0.2:7701"
    up: bool = True


@dataclass
class Homes:
    nodes: dict[str, Home]
    asked: list[str] = field(default_factory=list)

    async def remote_home(self, row: Row) -> Home | None:
        self.asked.append(row.id)
        return None if row.node_id in (None, "here") else self.nodes[str(row.node_id)]


@dataclass
class Repo:
    rows: dict[str, Row]

    async def org_for_key(self, raw: str) -> str | None:
        return {"k1": "org1", "k2": "org2"}.get(raw)

    async def get_sandbox(self, sandbox_id: str, org_id: str | None = None) -> Row | None:
        row = self.rows.get(sandbox_id)
        return None if row is None or (org_id is not None and row.org_id != org_id) else row


@dataclass
class Slot:
    sandbox_ip: str = "10.9.0.2"


@dataclass
class Port:
    port: int = 8080


@dataclass
class Manager:
    repo: Repo
    resumed: list[str] = field(default_factory=list)

    async def ensure_running(self, row: Row) -> Row:
        self.resumed.append(row.id)
        row.state = "running"
        return row

    def slot_of(self, row: Row) -> Slot | None:
        return Slot()

    def template_for(self, row: Row) -> Port:
        return Port()


@dataclass
class Grants:
    def cached(self, token: str) -> Grant | None:
        return None

    async def find(self, token: str) -> Grant | None:
        sandbox = {"atpok": "sbxr", "atploc": "sbxl"}.get(token)
        return None if sandbox is None else Grant("psu_1", "org1", sandbox, 3000, time.time() + 60)


def _lookup(token: str | None = TOKEN) -> tuple[SandboxLookup[Row], Manager, Homes]:
    rows = {
        "sbxl": Row("sbxl", "org1", "running"),
        "sbxr": Row("sbxr", "org1", "paused", node_id="node-a"),
        "sbxd": Row("sbxd", "org1", "failed", node_id="node-d"),
        "sbxn": Row("sbxn", "org1", "running", node_id="node-n"),
    }
    homes = Homes(
        {"node-a": Home("node-a"), "node-d": Home("node-d", up=False), "node-n": Home("node-n", None)}
    )
    manager = Manager(Repo(rows))
    return SandboxLookup(manager, Grants(), homes=homes, cluster_token=token), manager, homes


async def test_another_nodes_sandbox_goes_to_its_router_and_is_not_resumed_here() -> None:
    lookup, manager, _ = _lookup()
    hop = Hop("node-a", "org1", None)
    want = Destination("10.0.0.2", 7701, "sbxr", hop)
    assert await lookup.resolve(SandboxTarget("sbxr", None), "k1") == want
    assert manager.resumed == []  # paused there: the node's router resumes it
    assert lookup.cached(SandboxTarget("sbxr", None), "k1") == want
    assert lookup.cached(SandboxTarget("sbxr", 3000), "k1") == want._replace(
        hop=hop._replace(sandbox_port=3000)
    )
    # presigned: the grant's organisation and port are what the replica asserts, and its token
    # goes along (the node checks the grant too: a deleted one stops working there at once)
    presigned = want._replace(hop=Hop("node-a", "org1", 3000, "atpok"))
    assert await lookup.resolve(TokenTarget("atpok"), None) == presigned
    assert "atpok" not in repr(presigned)
    # the organisation is checked here before anything is asserted to the node
    with pytest.raises(NotFoundError):
        await lookup.resolve(SandboxTarget("sbxr", None), "k2")
    with pytest.raises(AuthenticationError):
        await lookup.resolve(SandboxTarget("sbxr", None), None)
    # this process's own sandbox: its address, as on one host
    assert await lookup.resolve(SandboxTarget("sbxl", None), "k1") == Destination("10.9.0.2", 8080, "sbxl")


async def test_a_down_node_a_node_without_router_and_no_token_are_answered_not_connected() -> None:
    lookup, _, _ = _lookup()
    with pytest.raises(NodeUnreachable, match="node-d, which is down"):
        await lookup.resolve(SandboxTarget("sbxd", None), "k1")
    with pytest.raises(NodeUnreachable, match="no router address"):
        await lookup.resolve(SandboxTarget("sbxn", None), "k1")
    tokenless, _, _ = _lookup(token=None)
    with pytest.raises(UnavailableError, match="ATOLL_CLUSTER_TOKEN") as refused:
        await tokenless.resolve(SandboxTarget("sbxr", None), "k1")
    assert refused.value.status_code == 503 and refused.value.retry_after


async def test_a_hop_is_served_here_or_refused_never_sent_on() -> None:
    lookup, manager, _ = _lookup()
    # a hop for this node's own (paused) sandbox: no key needed, resumed here
    manager.repo.rows["sbxl"].state = "paused"
    trusted = TrustedTarget("sbxl", 3000, "org1")
    assert await lookup.resolve(trusted, None) == Destination("10.9.0.2", 3000, "sbxl")
    assert manager.resumed == ["sbxl"] and lookup.cached(trusted, None) is not None
    with pytest.raises(NotFoundError):  # the asserted organisation still scopes the look-up
        await lookup.resolve(TrustedTarget("sbxl", None, "org2"), None)
    # a presigned URL's hop: the grant is checked here too, and must open what is asserted
    assert (await lookup.resolve(TrustedTarget("sbxl", 3000, "org1", "atploc"), None)).port == 3000
    for other in ("atpgone", "atpok"):
        with pytest.raises(NotFoundError, match="presigned"):
            await lookup.resolve(TrustedTarget("sbxl", 3000, "org1", other), None)
    with pytest.raises(NotFoundError, match="presigned"):
        await lookup.resolve(TrustedTarget("sbxl", 8080, "org1", "atploc"), None)
    with pytest.raises(ConflictError, match="node-a, not on this one"):
        await lookup.resolve(TrustedTarget("sbxr", None, "org1"), None)
    await lookup.resolve(SandboxTarget("sbxr", None), "k1")  # cached as another node's
    assert lookup.cached(TrustedTarget("sbxr", None, "org1"), None) is None
