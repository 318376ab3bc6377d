"""From a routing target and an API key (or a presigned token) to the address to connect to.

``cached`` answers from memory in a few dictionary look-ups (the per-request fast path);
``resolve`` does the real work: key check, sandbox look-up scoped to the key's org, resume of a
paused sandbox, and the template's PORT. Only running sandboxes are cached, for ``ttl`` seconds,
and ``forget`` drops an entry the moment its sandbox changes state."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from atoll._exceptions import AuthenticationError, ConflictError, NotFoundError
from atoll._states import LIVE_STATES, State
from atoll.router._names import Target, TokenTarget
from atoll.router._presigned import Grant


# What the router needs from the rest of the control plane, declared here so that the router
# depends on these few members and not on the server's classes (the server passes its own
# objects in; tests pass small fakes).
class SandboxRecord(Protocol):
    @property
    def state(self) -> str: ...


Row = TypeVar("Row", bound=SandboxRecord)
Row_co = TypeVar("Row_co", bound=SandboxRecord, covariant=True)


class SandboxRecords(Protocol[Row_co]):
    """The store's read side: sandboxes by id (scoped to an org) and API keys."""

    async def get_sandbox(self, sandbox_id: str, org_id: str | None = None) -> Row_co | None: ...

    async def org_for_key(self, raw_key: str) -> str | None: ...


class SandboxAddress(Protocol):
    @property
    def sandbox_ip(self) -> str: ...


class ServicePort(Protocol):
    @property
    def port(self) -> int: ...


class SandboxLifecycle(Protocol[Row]):
    """The sandbox lifecycle as the router uses it: look up, resume a paused sandbox, and find
    its address and the template's PORT."""

    @property
    def repo(self) -> SandboxRecords[Row]: ...

    async def ensure_running(self, row: Row) -> Row:
        """The row once running (a paused sandbox resumes); ``ConflictError`` if it cannot run,
        ``NotFoundError`` if it is gone."""

    def slot_of(self, row: Row) -> SandboxAddress | None: ...

    def template_for(self, row: Row) -> ServicePort: ...


class Grants(Protocol):
    """Presigned-URL grants (``PresignedStore``)."""

    def cached(self, token: str) -> Grant | None: ...

    async def find(self, token: str) -> Grant | None: ...


class Destination(NamedTuple):
    """Where one request goes; equal destinations share an upstream connection."""

    host: str
    port: int
    sandbox_id: str


class Lookup(Protocol):
    def cached(self, target: Target, api_key: str | None) -> Destination | None:
        """The destination when everything needed is in memory; None means "call resolve"."""

    async def resolve(self, target: Target, api_key: str | None) -> Destination:
        """The destination, or an ``APIError`` (401, 404, 409) to answer with."""


@dataclass(frozen=True, slots=True)
class _Running:
    org_id: str
    default: Destination  # the template's PORT
    at: float


class SandboxLookup(Generic[Row]):
    def __init__(
        self, manager: SandboxLifecycle[Row], presigned: Grants, *, ttl: float = 2.0, key_ttl: float = 10.0
    ) -> None:
        self.manager = manager
        self.presigned = presigned
        self.ttl = ttl
        self.key_ttl = key_ttl
        self._keys: dict[str, tuple[str, float]] = {}  # raw key -> (org id, cached at)
        self._sandboxes: dict[str, _Running] = {}
        self._changes = 0  # bumped on every state change: a look-up that raced one is not cached

    def forget(self, sandbox_id: str) -> None:
        self._changes += 1
        self._sandboxes.pop(sandbox_id, None)

    # fast path ---------------------------------------------------------------------------
    def cached(self, target: Target, api_key: str | None) -> Destination | None:
        now = time.monotonic()
        port: int | None
        if isinstance(target, TokenTarget):
            grant = self.presigned.cached(target.token)
            if grant is None or grant.expired():
                return None
            org_id, sandbox_id, port = grant.org_id, grant.sandbox_id, grant.port
        else:
            if api_key is None:
                return None
            known = self._keys.get(api_key)
            if known is None or now - known[1] > self.key_ttl:
                return None
            org_id, sandbox_id, port = known[0], target.sandbox_id, target.port
        entry = self._sandboxes.get(sandbox_id)
        if entry is None or entry.org_id != org_id or now - entry.at > self.ttl:
            return None
        default = entry.default
        return default if port is None or port == default.port else default._replace(port=port)

    async def is_live(self, sandbox_id: str) -> bool:
        """Whether the sandbox still has its processes and network (running or paused)."""
        row = await self.manager.repo.get_sandbox(sandbox_id)
        return row is not None and State(row.state) in LIVE_STATES

    # slow path ---------------------------------------------------------------------------
    async def resolve(self, target: Target, api_key: str | None) -> Destination:
        if isinstance(target, TokenTarget):
            grant = await self._grant(target.token)
            return await self._running(grant.org_id, grant.sandbox_id, grant.port)
        org_id = await self._org(api_key)
        return await self._running(org_id, target.sandbox_id, target.port)

    async def _grant(self, token: str) -> Grant:
        grant = await self.presigned.find(token)
        if grant is None:
            raise NotFoundError("presigned URL not found (deleted, or never existed)")
        if grant.expired():
            raise AuthenticationError("presigned URL expired")
        return grant

    async def _org(self, api_key: str | None) -> str:
        if api_key is None:
            raise AuthenticationError(
                "missing API key: send 'authorization: Bearer <key>' (or use a presigned URL)"
            )
        org_id = await self.manager.repo.org_for_key(api_key)
        if org_id is None:
            raise AuthenticationError("invalid API key")
        self._keys[api_key] = (org_id, time.monotonic())
        return org_id

    async def _running(self, org_id: str, sandbox_id: str, port: int | None) -> Destination:
        changes = self._changes
        row = await self.manager.repo.get_sandbox(sandbox_id, org_id)
        if row is None:
            raise NotFoundError(f"sandbox {sandbox_id} not found")
        if State(row.state) != State.RUNNING:
            try:
                # a paused sandbox resumes and the request waits; shielded, so a client that
                # gives up mid-resume cannot leave the sandbox half resumed
                row = await asyncio.shield(self.manager.ensure_running(row))
            except NotFoundError:
                raise NotFoundError(f"sandbox {sandbox_id} not found") from None
            except ConflictError:
                row = await self.manager.repo.get_sandbox(sandbox_id, org_id) or row
                hint = " (start it with POST /v1/sandbox/{id}/start)" if row.state == State.STOPPED else ""
                raise ConflictError(f"sandbox {sandbox_id} is {row.state}, not running{hint}") from None
        slot = self.manager.slot_of(row)
        if slot is None:
            raise ConflictError(f"sandbox {sandbox_id} has no network (state {row.state})")
        default = Destination(slot.sandbox_ip, self.manager.template_for(row).port, sandbox_id)
        if changes == self._changes:
            self._sandboxes[sandbox_id] = _Running(org_id, default, time.monotonic())
        return default if port is None else default._replace(port=port)
