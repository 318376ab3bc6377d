"""``SandboxLookup`` over an in-memory manager: who may reach what, and when the cache may answer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from atoll._exceptions import AuthenticationError, ConflictError, NotFoundError
from atoll.router import Destination, Grant, SandboxLookup, SandboxTarget, TokenTarget


@dataclass
class Row:
    id: str
    org_id: str
    state: str
    net_slot: int | None = 1


@dataclass
class Slot:
    sandbox_ip: str


@dataclass
class Template:
    port: int = 8080


@dataclass
class FakeRepo:
    keys: dict[str, str]
    rows: dict[str, Row]

    async def org_for_key(self, raw: str) -> str | None:
        return self.keys.get(raw)

    async def get_sandbox(self, sandbox_id: str, org_id: str | None = None) -> Row | None:
        row = self.rows.get(sandbox_id)
        if row is None or row.state == "deleted" or (org_id is not None and row.org_id != org_id):
            return None
        return row


@dataclass
class FakeManager:
    repo: FakeRepo
    resumed: list[str] = field(default_factory=list)

    async def ensure_running(self, row: Row) -> Row:
        if row.state == "paused":
            self.resumed.append(row.id)
            row.state = "running"
        if row.state != "running":
            raise ConflictError(f"sandbox is {row.state}")
        return row

    def slot_of(self, row: Row) -> Slot | None:
        return Slot("10.9.0.2") if row.net_slot else None

    def template_for(self, row: Row) -> Template:
        return Template()


@dataclass
class FakePresigned:
    grants: dict[str, Grant]

    def cached(self, token: str) -> Grant | None:
        return self.grants.get(token)

    async def find(self, token: str) -> Grant | None:
        return self.grants.get(token)


@pytest.fixture
def setup() -> tuple[SandboxLookup[Row], FakeManager, FakePresigned]:
    repo = FakeRepo(
        keys={"k1": "org1", "k2": "org2"},
        rows={
            "sbxa": Row("sbxa", "org1", "running"),
            "sbxp": Row("sbxp", "org1", "paused"),
            "sbxs": Row("sbxs", "org1", "stopped", net_slot=None),
        },
    )
    manager = FakeManager(repo)
    presigned = FakePresigned(
        {
            "atpok": Grant("psu_1", "org1", "sbxa", 3000, time.time() + 60),
            "atpold": Grant("psu_2", "org1", "sbxa", 3000, time.time() - 1),
        }
    )
    lookup = SandboxLookup(manager, presigned)
    return lookup, manager, presigned


async def test_key_org_and_port(setup: Any) -> None:
    lookup, _, _ = setup
    a = SandboxTarget("sbxa", None)
    assert lookup.cached(a, "k1") is None  # nothing known yet
    assert await lookup.resolve(a, "k1") == Destination("10.9.0.2", 8080, "sbxa")
    assert lookup.cached(a, "k1") == Destination("10.9.0.2", 8080, "sbxa")
    assert lookup.cached(SandboxTarget("sbxa", 3000), "k1") == Destination("10.9.0.2", 3000, "sbxa")
    assert lookup.cached(a, "k2") is None  # another org's key is never answered from the cache
    with pytest.raises(NotFoundError):
        await lookup.resolve(a, "k2")
    with pytest.raises(AuthenticationError):
        await lookup.resolve(a, None)
    with pytest.raises(AuthenticationError):
        await lookup.resolve(a, "nope")
    with pytest.raises(NotFoundError, match="sbxz"):
        await lookup.resolve(SandboxTarget("sbxz", None), "k1")


async def test_paused_resumes_stopped_conflicts(setup: Any) -> None:
    lookup, manager, _ = setup
    assert (await lookup.resolve(SandboxTarget("sbxp", None), "k1")).host == "10.9.0.2"
    assert manager.resumed == ["sbxp"]
    with pytest.raises(ConflictError, match="sbxs is stopped"):
        await lookup.resolve(SandboxTarget("sbxs", None), "k1")


async def test_state_change_drops_the_cache(setup: Any) -> None:
    lookup, manager, _ = setup
    a = SandboxTarget("sbxa", None)
    await lookup.resolve(a, "k1")
    assert lookup.cached(a, "k1") is not None
    manager.repo.rows["sbxa"].state = "paused"
    lookup.forget("sbxa")  # what ObservedRepository calls on every sandbox update
    assert lookup.cached(a, "k1") is None
    await lookup.resolve(a, "k1")
    assert manager.resumed == ["sbxa"]


async def test_presigned_tokens(setup: Any) -> None:
    lookup, _, _ = setup
    assert await lookup.resolve(TokenTarget("atpok"), None) == Destination("10.9.0.2", 3000, "sbxa")
    assert lookup.cached(TokenTarget("atpok"), None) == Destination("10.9.0.2", 3000, "sbxa")
    assert lookup.cached(TokenTarget("atpold"), None) is None
    with pytest.raises(AuthenticationError, match="expired"):
        await lookup.resolve(TokenTarget("atpold"), None)
    with pytest.raises(NotFoundError):
        await lookup.resolve(TokenTarget("atpgone"), None)
