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

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from atoll._exceptions import NodeUnreachable
from atoll.cluster.placement import PlacementRequest, Placer, provisional_id
from atoll.cluster.registry import NodeRegistry
from atoll.server import errors, forward_ws
from atoll.server.schemas import CreateSandboxBody

log = logging.getLogger("atoll.server")

# a sandbox's own paths: /v1/sandbox/{id} and everything below it
SANDBOX_PATH = re.compile(r"^/v1/sandbox/(?P<sandbox_id>[^/]+)(?P<rest>/.*)?$")
# headers of one connection, not of the request (RFC 9110 §7.6.1), and the replica's own Host
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host",
    }
)  # fmt: skip
CONNECT_TIMEOUT_S = 5.0
# a create may pull and unpack a template on its node; longer than any the node itself allows
CREATE_TIMEOUT_S = 900.0


def forwarded_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k.lower() not in HOP_BY_HOP]


class NodeForwarder:
    """Where requests go, and the one HTTP client they go through (its pool is the replica's
    connections to the nodes: bounded, so a flood of requests cannot open unbounded sockets)."""

    def __init__(self, *, node_id: str, registry: NodeRegistry, placer: Placer, max_connections: int) -> None:
        self.node_id = node_id
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

    async def node_for(self, sandbox_id: str) -> str | None:
        """The address of the up node (not this process) running the sandbox, if any."""
        home = await self.registry.home_of(sandbox_id)
        if home is None or not home.up or home.node_id == self.node_id:
            return None
        return home.address

    async def create(self, org_id: str, body: CreateSandboxBody, request: Request) -> Response:
        """Place the sandbox, send the create to the node chosen, and keep the room under the
        sandbox's id when the node made it (give it back otherwise). Placed under a provisional
        id first: the node names the sandbox (a warm one comes with its own id)."""
        pending = provisional_id()
        placed = PlacementRequest(pending, org_id, body.template_name, body.vcpu, body.memory)
        placement = await self.placer.place(placed)  # ClusterCapacityExhausted: 503 + Retry-After
        made = False
        try:
            answer = await self.client.request(
                "POST",
                placement.address + request.url.path,
                content=await request.body(),
                headers=forwarded_headers(request.headers.raw),
                timeout=httpx.Timeout(CREATE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            )
            if answer.status_code == 201:
                made = await self.placer.rename(pending, answer.json()["id"])
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {placement.node_id} did not answer the create: {exc}") from exc
        finally:
            if not made:
                await self.placer.release(pending)
        return Response(answer.content, answer.status_code, headers=_response_headers(answer))

    async def relay(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        """Send the request to ``address`` and its answer back, both streamed."""
        url = address + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        outgoing = self.client.build_request(
            scope["method"], url, headers=forwarded_headers(scope["headers"]), content=_body(receive)
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


def _response_headers(answer: httpx.Response) -> dict[str, str]:
    # the body is relayed decoded (``content``): its encoding and length are the new response's
    skip = {"content-encoding", "content-length"}
    return {k: v for k, v in answer.headers.items() if k.encode() not in HOP_BY_HOP and k not in skip}


def _is_record(scope: Scope, rest: str | None) -> bool:
    """``GET /v1/sandbox/{id}``: read from the shared store by any process."""
    return scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and rest in (None, "/")


class ForwardToNodeMiddleware:
    """On an API replica, hands a sandbox's requests to its node (HTTP and WebSocket)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarder = _forwarder(scope)
        match = SANDBOX_PATH.match(scope.get("path", "")) if forwarder is not None else None
        if forwarder is None or match is None or _is_record(scope, match["rest"]):
            await self.app(scope, receive, send)
            return
        address = await forwarder.node_for(match["sandbox_id"])
        if address is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await forward_ws.relay(scope, receive, send, address)
        else:
            await forwarder.relay(scope, receive, send, address)


def _forwarder(scope: Scope) -> NodeForwarder | None:
    if scope["type"] not in ("http", "websocket"):
        return None
    services: Any = getattr(scope["app"].state, "services", None)  # set once the lifespan started
    return getattr(services, "forwarder", None)
