"""An API replica's forwarding (``atoll serve --role api``, docs/cluster.md): a create is placed
on a node (``atoll.cluster.placement``) and sent there; every other request about a sandbox goes
to the node whose host runs it, streamed both ways without buffering (HTTP bodies chunk by
chunk, WebSockets message by message). The client's own credentials travel with it and the node
checks them against the shared store, so a replica grants nothing a node would not.

Answered by the replica itself, from the shared store: listings, a sandbox's record (``GET
/v1/sandbox/{id}``, so a sandbox whose node is down still reads as ``failed`` with its reason),
and anything about a sandbox whose node is down or unknown (the routes then answer as for a
sandbox this process does not run)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from atoll._exceptions import APIError, AuthenticationError, NodeUnreachable
from atoll.cluster.placement import PlacementRequest, Placer, provisional_id
from atoll.cluster.registry import NodeRegistry, SandboxHome
from atoll.cluster.template_homes import importer, lister
from atoll.server import errors, forward_ws
from atoll.server.cluster_auth import TOKEN_HEADER
from atoll.server.schemas import CreateSandboxBody, RestoreSnapshotBody
from atoll.templates.registry import SYSTEM_PREFIX, NameLookup

log = logging.getLogger("atoll.server")

# a sandbox's own paths: /v1/sandbox/{id} and everything below it
SANDBOX_PATH = re.compile(r"^/v1/sandbox/(?P<sandbox_id>[^/]+)(?P<rest>/.*)?$")
# a snapshot's record (its delete removes files on the node that holds them)
SNAPSHOT_PATH = re.compile(r"^/v1/snapshot/(?P<snapshot_id>[^/]+)/?$")
# an import of an organisation's template: done by a node (docs/cluster.md, Templates)
TEMPLATE_IMPORT_PATH = re.compile(r"^/v1/template/?$")
# what a replica reads of templates: the system ones are on the nodes' hosts (docs/cluster.md)
TEMPLATE_READ_PATH = re.compile(r"^/v1/(templates|template/[^/]+)/?$")
# headers of one connection, not of the request (RFC 9110 §7.6.1), and the replica's own Host
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host",
    }
)  # fmt: skip
# a restore moved off a draining node: where the snapshot's files are (with the cluster token)
SOURCE_HEADER = "x-atoll-snapshot-source"
CLUSTER_HEADERS = frozenset({TOKEN_HEADER.encode(), SOURCE_HEADER.encode()})
CONNECT_TIMEOUT_S = 5.0
# a create may pull and unpack a template on its node; longer than any the node itself allows
CREATE_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class PlacementSpec:
    template: str
    vcpu: int
    memory_mib: int


def forwarded_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP]


def to_node_headers(raw: list[tuple[bytes, bytes]], cluster_token: str | None) -> list[tuple[bytes, bytes]]:
    """A client's request headers as a replica sends them on to a node: never the client's own
    cluster headers, and this replica's cluster token when it has one (the node then does not
    count the request against the key's rate limit again: the replica counted it)."""
    own = [(k, v) for k, v in forwarded_headers(raw) if k.lower() not in CLUSTER_HEADERS]
    return own + ([(TOKEN_HEADER.encode(), cluster_token.encode())] if cluster_token else [])


class NodeForwarder:
    """Where requests go, and the one HTTP client they go through (its pool is the replica's
    connections to the nodes: bounded, so a flood of requests cannot open unbounded sockets)."""

    def __init__(
        self,
        *,
        node_id: str,
        registry: NodeRegistry,
        placer: Placer,
        max_connections: int,
        cluster_token: str | None = None,
        template_id_for: NameLookup | None = None,
    ) -> None:
        self.node_id = node_id
        # an organisation's template name -> its id, as nodes report it cached (placement)
        self.template_id_for = template_id_for
        self.cluster_token = cluster_token
        self.registry = registry
        self.placer = placer
        self.client = httpx.AsyncClient(
            # no read timeout: a stream (a running command's output, a terminal) is as long as
            # the client keeps it; the node bounds each operation itself
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _reachable(self, home: SandboxHome | None) -> str | None:
        """The address of ``home`` when it is another node that is up."""
        if home is None or not home.up or home.node_id == self.node_id:
            return None
        return home.address

    async def node_for(self, sandbox_id: str) -> str | None:
        """The address of the up node (not this process) running the sandbox, if any."""
        return self._reachable(await self.registry.home_of(sandbox_id))

    async def node_for_snapshot(self, snapshot_id: str) -> str | None:
        """The address of the up node (not this process) holding the snapshot's files, if any."""
        return self._reachable(await self.registry.home_of_snapshot(snapshot_id=snapshot_id))

    async def node_for_import(self) -> str:
        """The node a template import goes to (``template_homes.importer``); NodeUnreachable
        (503) when no node is up to do it."""
        node = importer(await self.registry.nodes())
        if node is None:
            raise NodeUnreachable("no node of the cluster is up to import the template; retry later")
        return node.address

    async def node_for_templates(self) -> str:
        """The node that lists templates for this replica, which holds none: the live one with
        the most system templates built (``template_homes.lister``); 503 when none is up."""
        node = lister(await self.registry.nodes())
        if node is None:
            raise NodeUnreachable("no node of the cluster is up to list its templates; retry later")
        return node.address

    async def create(self, org_id: str, body: CreateSandboxBody, request: Request) -> Response:
        """Place the sandbox, send the create to the node chosen (``_placed``)."""
        template = body.template_name
        if not template.startswith(SYSTEM_PREFIX) and self.template_id_for is not None:
            # nodes report an organisation's templates cached by id (names are per organisation)
            template = await self.template_id_for(org_id, template) or template
        return await self._placed(org_id, PlacementSpec(template, body.vcpu, body.memory), request)

    async def _placed(
        self,
        org_id: str,
        spec: PlacementSpec,
        request: Request,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """Place, send the request to the node chosen, and keep the room under the new
        sandbox's id when the node made it (give it back otherwise). Placed under a provisional
        id first: the node names the sandbox (a warm one comes with its own id)."""
        pending = provisional_id()
        wanted = PlacementRequest(pending, org_id, spec.template, spec.vcpu, spec.memory_mib)
        placement = await self.placer.place(wanted)  # ClusterCapacityExhausted: 503 + Retry-After
        sandbox_id = None
        try:
            answer = await self._send(placement.node_id, placement.address, request, extra_headers)
            if answer.status_code == 201:
                made = answer.json()["id"]
                if await request.is_disconnected():
                    await self._undo_create(placement.address, made, request)
                sandbox_id = made
        finally:
            if sandbox_id is None:  # not made, or undone: the room goes back
                await self.placer.release(pending)
        if sandbox_id is None:
            return _relayed(answer)
        # the room goes under the sandbox's id once the answer is on its way: bookkeeping the
        # client need not wait for (a transaction: ~3 ms of a create's ~40). A replica killed
        # in between leaves it provisional, given back after PROVISIONAL_TTL_S like any other.
        return _relayed(answer, background=BackgroundTask(self._keep_room, pending, sandbox_id))

    async def _keep_room(self, pending: str, sandbox_id: str) -> None:
        try:
            renamed = await self.placer.rename(pending, sandbox_id)
        except SQLAlchemyError as exc:  # the answer is gone: nobody to tell but the log
            log.warning("sandbox %s: its room stays provisional (%s): %s", sandbox_id, pending, exc)
            return
        if not renamed:
            log.warning("sandbox %s was placed under %s, which no longer holds room", sandbox_id, pending)

    async def _undo_create(self, address: str, sandbox_id: str, request: Request) -> None:
        """Nobody will learn the id of a sandbox whose client went away before the answer: its
        node deletes it (as a node does for a client of its own: routes.sandboxes)."""
        log.warning("deleted sandbox %s: its create's client went away before the answer", sandbox_id)
        with contextlib.suppress(httpx.HTTPError):  # a node that does not answer: its reconcile
            credentials = {"authorization": request.headers.get("authorization", "")}
            if self.cluster_token:  # the replica's own clean-up: not the client's request to count
                credentials[TOKEN_HEADER] = self.cluster_token
            await self.client.delete(f"{address}/v1/sandbox/{sandbox_id}", headers=credentials)
        raise ClientDisconnect

    async def restore(self, org_id: str, body: RestoreSnapshotBody, request: Request) -> Response | None:
        """Send a restore to the node holding the snapshot's files; when that node is draining,
        place the restore like a create and have the chosen node copy the files from it first
        (needs the cluster token). None when no node of the cluster holds the snapshot (the
        caller answers as for an unknown one)."""
        home = await self.registry.home_of_snapshot(org_id=org_id, name=body.snapshot_name)
        shape = await self.registry.snapshot_shape(org_id, body.snapshot_name)
        if home is None or shape is None or home.node_id == self.node_id:
            return None
        if not home.up:
            raise NodeUnreachable(f"node {home.node_id}, which holds the snapshot, is down")
        if not home.draining:
            return _relayed(await self._send(home.node_id, home.address, request))
        if self.cluster_token is None:
            raise NodeUnreachable(
                f"node {home.node_id}, which holds the snapshot, is draining; restoring it on another "
                "node needs the cluster token (ATOLL_CLUSTER_TOKEN) on every process"
            )
        moved = {TOKEN_HEADER: self.cluster_token, SOURCE_HEADER: home.address}
        return await self._placed(org_id, PlacementSpec(*shape), request, extra_headers=moved)

    async def _send(
        self, node_id: str, address: str, request: Request, extra_headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """The request, as the client sent it, to the same path on the node (whole: a create's
        or a restore's body and answer are small). The client's own cluster headers never
        travel: only this replica's token and ``extra_headers`` do."""
        own = to_node_headers(request.headers.raw, None)
        extra_headers = {
            **({TOKEN_HEADER: self.cluster_token} if self.cluster_token else {}),
            **(extra_headers or {}),
        }
        extra = [(k.encode(), v.encode()) for k, v in extra_headers.items()]
        try:
            return await self.client.request(
                request.method,
                address + request.url.path,
                content=await request.body(),
                headers=own + extra,
                timeout=httpx.Timeout(CREATE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            )
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {node_id} did not answer: {exc}") from exc

    async def relay(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        """Send the request to ``address`` and its answer back, both streamed."""
        url = address + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        outgoing = self.client.build_request(
            scope["method"],
            url,
            headers=to_node_headers(scope["headers"], self.cluster_token),
            content=_body(receive),
        )
        try:
            answer = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            failure = NodeUnreachable(f"the sandbox's node at {address} did not answer: {exc}")
            await errors.error_response(errors.http_error(failure))(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": answer.status_code, "headers": _raw(answer)})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError:
            # the node went away mid-answer: the client must see a cut connection, never a
            # complete-looking short body, so the error goes on to the server, which drops it
            log.warning("the node at %s broke off %s %s", address, scope["method"], scope["path"])
            raise
        finally:
            await answer.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _raw(answer: httpx.Response) -> list[tuple[bytes, bytes]]:
    return forwarded_headers(list(answer.headers.raw))


def _relayed(answer: httpx.Response, background: BackgroundTask | None = None) -> Response:
    # the body is relayed decoded (``content``): its encoding and length are the new response's
    skip = {"content-encoding", "content-length"}
    headers = {k: v for k, v in answer.headers.items() if k.encode() not in HOP_BY_HOP and k not in skip}
    return Response(answer.content, answer.status_code, headers=headers, background=background)


def _is_record(scope: Scope, rest: str | None) -> bool:
    """``GET /v1/sandbox/{id}``: read from the shared store by any process."""
    return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and rest in (None, "/")


def _is_ssh_access(scope: Scope, rest: str | None) -> bool:
    """``/v1/sandbox/{id}/ssh/...`` on a replica that runs an SSH gateway: the accesses live in
    the shared store, and the ``ssh_command`` they name must be this replica's gateway, which
    relays to the sandbox's node (atoll.ssh.relay). Without a gateway here, the node answers."""
    if rest is None or not (rest == "/ssh" or rest.startswith("/ssh/")):
        return False
    services: Any = getattr(scope["app"].state, "services", None)
    return getattr(services, "ssh_access", None) is not None


class ForwardToNodeMiddleware:
    """On an API replica, hands a sandbox's requests to its node (HTTP and WebSocket)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarder = _forwarder(scope)
        try:
            address = None if forwarder is None else await _destination(forwarder, scope)
        except NodeUnreachable as exc:  # no node to send it to: 503 with Retry-After
            await errors.error_response(await _unreachable(exc, scope))(scope, receive, send)
            return
        if forwarder is None or address is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await forward_ws.relay(
                scope, receive, send, address, to_node_headers(scope["headers"], forwarder.cluster_token)
            )
        else:
            await forwarder.relay(scope, receive, send, address)


async def _unreachable(exc: NodeUnreachable, scope: Scope) -> APIError:
    """The 503, to a client with a key only: any other gets its 401, as a node would answer."""
    from atoll.server.auth import require_org  # it imports the services' state, which imports us

    try:
        await require_org(Request(scope))
    except AuthenticationError as refused:
        return refused
    return errors.http_error(exc)


async def _destination(forwarder: NodeForwarder, scope: Scope) -> str | None:
    """The node the request goes to; None: this process answers it (its routes then answer 404
    for a path with dot segments, which the relay's URL handling would otherwise resolve into a
    path other than the one checked here)."""
    path = scope.get("path", "")
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    if (sandbox := SANDBOX_PATH.match(path)) is not None:
        if _is_record(scope, sandbox["rest"]) or _is_ssh_access(scope, sandbox["rest"]):
            return None
        return await forwarder.node_for(sandbox["sandbox_id"])
    if (snapshot := SNAPSHOT_PATH.match(path)) is not None and scope.get("method") == "DELETE":
        return await forwarder.node_for_snapshot(snapshot["snapshot_id"])
    if scope["type"] != "http":
        return None
    if TEMPLATE_IMPORT_PATH.match(path) and scope.get("method") == "POST":
        return await forwarder.node_for_import()
    if TEMPLATE_READ_PATH.match(path) and scope.get("method") in ("GET", "HEAD"):
        return await forwarder.node_for_templates()
    return None


def _forwarder(scope: Scope) -> NodeForwarder | None:
    if scope["type"] not in ("http", "websocket"):
        return None
    services: Any = getattr(scope["app"].state, "services", None)  # set once the lifespan started
    return getattr(services, "forwarder", None)
