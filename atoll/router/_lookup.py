"""From a routing target and an API key (or a presigned token) to the address to connect to.

``cached`` answers from memory in a few dictionary look-ups (the per-request fast path);
``resolve`` does the real work: key check, sandbox look-up scoped to the key's org, resume of a
paused sandbox, and the template's PORT. Only running sandboxes are cached, for ``ttl`` seconds,
and ``forget`` drops an entry the moment its sandbox changes state.

In a cluster (``homes`` given), a sandbox another node runs is not resumed nor connected to
here: once the key (or token) and the organisation are checked, its destination is that node's
router, with a ``Hop`` saying what this router asserts there (``_hop``); the node's router
resumes it if paused. A request that came in by such a hop is never sent on by another."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

from atoll._exceptions import (
    AuthenticationError,
    ConflictError,
    NodeUnreachable,
    NotFoundError,
    UnavailableError,
)
from atoll._states import LIVE_STATES, State
from atoll.router._hop import Hop
from atoll.router._names import Target, TokenTarget, TrustedTarget
from atoll.router._presigned import Grant

NO_TOKEN_RETRY_AFTER_S = 30  # a setting to fix, not a moment to wait


# What the router needs from the rest of the control plane, declared here so that the router
# depends on these few members and not on the server's classes (the server passes its own
# objects in; tests pass small fakes).
class SandboxRecord(Protocol):
    @property
    def state(self) -> str: ...


Row = TypeVar("Row", bound=SandboxRecord)
Row_co = TypeVar("Row_co", bound=SandboxRecord, covariant=True)
Row_contra = TypeVar("Row_contra", bound=SandboxRecord, contravariant=True)


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


class NodeHome(Protocol):
    """The cluster node that runs a sandbox (``atoll.cluster.registry.SandboxHome``)."""

    @property
    def node_id(self) -> str: ...
    @property
    def router_address(self) -> str | None: ...  # "http://host:port"
    @property
    def up(self) -> bool: ...


class SandboxHomes(Protocol[Row_contra]):
    """Where a cluster's sandboxes run (``atoll.server.cluster_role.RouterHomes``)."""

    async def remote_home(self, row: Row_contra) -> NodeHome | None:
        """The node that runs the sandbox when it is another than this process; None when the
        sandbox is this process's own (or no node's: one host)."""


class Destination(NamedTuple):
    """Where one request goes; equal destinations share an upstream connection. With a ``hop``,
    ``host:port`` is the router of the node that runs the sandbox, which the request goes on to."""

    host: str
    port: int
    sandbox_id: str
    hop: Hop | None = None

    def at_port(self, port: int | None) -> Destination:
        """The same sandbox at another port (None: as it is, the template's PORT)."""
        if port is None:
            return self
        if self.hop is not None:
            same = self.hop.sandbox_port == port
            return self if same else self._replace(hop=self.hop._replace(sandbox_port=port))
        return self if port == self.port else self._replace(port=port)


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
        self,
        manager: SandboxLifecycle[Row],
        presigned: Grants,
        *,
        homes: SandboxHomes[Row] | None = None,
        cluster_token: str | None = None,
        ttl: float = 2.0,
        key_ttl: float = 10.0,
    ) -> None:
        self.manager = manager
        self.presigned = presigned
        self.homes = homes
        self.cluster_token = cluster_token
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
        elif isinstance(target, TrustedTarget):
            if target.presigned is not None:
                grant = self.presigned.cached(target.presigned)
                if grant is None or grant.expired() or not _grants(grant, target):
                    return None
            org_id, sandbox_id, port = target.org_id, target.sandbox_id, target.port
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
        dest = entry.default.at_port(port)
        if dest.hop is not None:
            if isinstance(target, TrustedTarget):
                return None  # a hop is never sent on (resolve says why)
            if isinstance(target, TokenTarget):
                return _with_presigned(dest, target.token)
        return dest

    async def is_live(self, sandbox_id: str) -> bool:
        """Whether the sandbox still has its processes and network (running or paused)."""
        row = await self.manager.repo.get_sandbox(sandbox_id)
        return row is not None and State(row.state) in LIVE_STATES

    # slow path ---------------------------------------------------------------------------
    async def resolve(self, target: Target, api_key: str | None) -> Destination:
        if isinstance(target, TokenTarget):
            grant = await self._grant(target.token)
            dest = await self._running(grant.org_id, grant.sandbox_id, grant.port)
            return _with_presigned(dest, target.token)
        if isinstance(target, TrustedTarget):  # the replica that sent it checked the organisation
            if target.presigned is not None:  # and the grant, which is checked here too
                grant = await self._grant(target.presigned)
                if not _grants(grant, target):
                    raise NotFoundError("presigned URL not found (deleted, or never existed)")
            return await self._running(target.org_id, target.sandbox_id, target.port, hopped=True)
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

    async def _running(
        self, org_id: str, sandbox_id: str, port: int | None, *, hopped: bool = False
    ) -> Destination:
        changes = self._changes
        row = await self.manager.repo.get_sandbox(sandbox_id, org_id)
        if row is None:
            raise NotFoundError(f"sandbox {sandbox_id} not found")
        home = await self.homes.remote_home(row) if self.homes is not None else None
        if home is not None:
            if hopped:  # the replica and this node disagree on where it runs: no second hop
                raise ConflictError(f"sandbox {sandbox_id} runs on node {home.node_id}, not on this one")
            default = self._remote(home, org_id, sandbox_id)
            if changes == self._changes:
                self._sandboxes[sandbox_id] = _Running(org_id, default, time.monotonic())
            return default.at_port(port)
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
        return default.at_port(port)

    def _remote(self, home: NodeHome, org_id: str, sandbox_id: str) -> Destination:
        """The router of the node that runs the sandbox, with what to assert there."""
        if not home.up:
            raise NodeUnreachable(f"sandbox {sandbox_id} runs on node {home.node_id}, which is down")
        if self.cluster_token is None:
            raise UnavailableError(
                f"sandbox {sandbox_id} runs on node {home.node_id}: this router reaches other nodes' "
                "sandboxes only with the cluster token (set ATOLL_CLUSTER_TOKEN)",
                retry_after=NO_TOKEN_RETRY_AFTER_S,
            )
        at = router_at(home.router_address)
        if at is None:
            raise NodeUnreachable(
                f"sandbox {sandbox_id} runs on node {home.node_id}, which has recorded no router address"
            )
        return Destination(at[0], at[1], sandbox_id, Hop(home.node_id, org_id, None))


def _grants(grant: Grant, target: TrustedTarget) -> bool:
    """Whether the grant opens what the hop asserts."""
    return (grant.org_id, grant.sandbox_id, grant.port) == (target.org_id, target.sandbox_id, target.port)


def _with_presigned(dest: Destination, token: str) -> Destination:
    """A hop made for a presigned URL carries its token: the node checks the grant too."""
    return dest if dest.hop is None else dest._replace(hop=dest.hop._replace(presigned=token))


def router_at(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a recorded router address (``http://host:port``); None if unusable."""
    if not address:
        return None
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or not parts.hostname or port is None:
        return None
    return parts.hostname, port
