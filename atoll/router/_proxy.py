"""One client connection to the router.

Requests are read by ``_request`` (llhttp, only as far as routing needs: the head rewritten, the
body passed on as it arrives, never buffered whole). Responses come back byte for byte;
``ResponseFraming`` only watches where each one ends.

Each request is routed on its own, so one keep-alive connection can reach many sandboxes
(header routing). A request for the sandbox port the connection already talks to goes out at
once, from the parser callback (the fast path, no task, no await). Anything else (a key or
sandbox not in the cache, a new upstream connection, a different sandbox while responses are
still due, HEAD, an upgrade) waits in ``backlog`` for the ``_pump`` task, with reading paused.
After ``101 Switching Protocols`` both directions become a plain byte pipe (WebSocket).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import httptools

from atoll._exceptions import APIError, BadRequestError, OperationFailure, ServerError
from atoll.router._context import ProxyContext
from atoll.router._hop import with_hop
from atoll.router._lookup import Destination
from atoll.router._request import Exchange, RequestReader
from atoll.router._responses import BadGateway, error_response
from atoll.router._upstream import WRITE_HIGH_WATER, UpstreamConnection, open_upstream

log = logging.getLogger("atoll.router")

HTTP, UPGRADING, TUNNEL, OPAQUE = range(4)  # client connection modes
DRAIN_S = 10.0  # how long an answered-early request may keep sending its body
MAX_HEAD = 64 * 1024  # request line + headers


__all__ = ["ClientConnection", "ProxyContext"]


class ClientConnection(asyncio.Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.reader = RequestReader(self, ctx.names, ctx.proto_header, ctx.cluster_token_bytes)
        self.parser = self.reader.parser
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.mode = HTTP
        self.closed = False  # close requested or done: nothing more is written
        self.closing = False  # answered early: swallow the rest of the body, then close
        self.draining = False  # the router is stopping: close once idle
        self.upstream: UpstreamConnection | None = None
        self.backlog: deque[Exchange] = deque()
        self.inflight: deque[Exchange] = deque()
        self.receiving: Exchange | None = None
        self.last_active = 0.0
        self._eof = False
        self._upstream_eof = False
        self._head_bytes = 0
        self._paused: set[str] = set()
        self._write_paused = False
        self._pump_task: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._held: list[bytes] = []  # client bytes after an upgrade request, until its answer
        self._timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b""
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.ctx.connections.add(self)
        self.last_active = self.loop.time()
        self._timer = self.loop.call_later(self.ctx.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        mode = self.mode
        if mode == TUNNEL:
            if self.upstream is not None:
                self.upstream.write(data)
            return
        if mode == UPGRADING:
            self._held.append(data)
            return
        if mode == OPAQUE or self.closed:
            return
        if self.receiving is None:
            if self._head_bytes == 0 and self._head_timer is None:
                self._head_timer = self.loop.call_later(self.ctx.head_timeout, self._head_timed_out)
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            self.mode = UPGRADING
            if rest:
                self._held.append(rest)
            self._pause("upgrade")
        except httptools.HttpParserCallbackError:
            log.exception("router: request handling failed")
            self._fail(ServerError("internal router error"))
        except httptools.HttpParserError as exc:
            self._fail(BadRequestError(f"malformed HTTP request: {exc}"))
        else:
            if self.receiving is None and self._head_bytes > MAX_HEAD:
                self._fail(APIError("request head too large", status_code=431))

    def eof_received(self) -> bool:
        self._eof = True
        if self.mode == TUNNEL and self.upstream is not None and self.upstream.transport is not None:
            if self.upstream.transport.can_write_eof() and not self._upstream_eof:
                self.upstream.transport.write_eof()  # half-close: the sandbox may still answer
                return True
            return False
        if self.receiving is not None:  # the request was cut short
            return False
        return bool(self.inflight or self.backlog)  # answer what was asked, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if not self.ctx.connections and self.ctx.all_closed is not None:
            self.ctx.all_closed.set()
        if self._timer is not None:
            self._timer.cancel()
        self._cancel_head_timer()
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self.upstream is not None:
            if exc is None:
                self.upstream.close()  # what was written still goes out, then FIN
            else:
                self.upstream.abort()
            self.upstream = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # requests, as the reader (``_request``) parses them -----------------------------------
    def request_head(self, ex: Exchange) -> None:
        self._head_bytes = 0
        self._cancel_head_timer()
        self.receiving = ex
        if not self.closing:
            self._dispatch(ex)

    def request_body(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None:
        if not self.closing:
            self._body_out(ex, pieces)

    def request_end(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None:
        self.receiving = None
        if self.closing:
            self._close()
        elif pieces:
            self._body_out(ex, pieces)

    # sending requests ---------------------------------------------------------------------
    def _body_out(self, ex: Exchange, pieces: tuple[bytes, ...]) -> None:
        if not ex.sent:
            ex.pending.extend(pieces)
        elif self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.writelines(pieces)

    def _can_pipeline(self, ex: Exchange) -> bool:
        up = self.upstream
        return (
            up is not None
            and up.reusable
            and ex.dest is not None
            and up.dest == ex.dest
            and not (self.inflight and (ex.exclusive or self.inflight[-1].exclusive))
        )

    def _dispatch(self, ex: Exchange) -> None:
        if not self.backlog and ex.error is None and ex.target is not None:
            ex.dest = self.ctx.lookup.cached(ex.target, ex.api_key)
            if ex.dest is not None and self._can_pipeline(ex):
                self._send(ex)
                return
        self.backlog.append(ex)
        self._pause("backlog")
        if self._pump_task is None:
            self._pump_task = self.loop.create_task(self._pump())

    def _send(self, ex: Exchange) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        ex.sent = True
        self.inflight.append(ex)
        head, dest, token = ex.head, ex.dest, self.ctx.cluster_token
        if dest is not None and dest.hop is not None and token is not None:  # on to the node's router
            head = with_hop(head, dest.hop, dest.sandbox_id, token)
        if ex.pending:
            self.upstream.transport.writelines([head, *ex.pending])
            ex.pending = []
        else:
            self.upstream.transport.write(head)

    async def _pump(self) -> None:
        """Send the backlog in order: resolve, wait for earlier responses, connect, send."""
        try:
            while self.backlog and not self.closed and self.mode in (HTTP, UPGRADING):
                ex = self.backlog[0]
                if ex.error is None and ex.dest is None:
                    ex.dest = await self._resolve(ex)
                if ex.error is not None or not self._can_pipeline(ex):
                    while self.inflight:  # earlier responses first
                        self._drained = self.loop.create_future()
                        await self._drained
                    if self.closed or self.mode in (TUNNEL, OPAQUE):
                        return
                if ex.error is None and not self._can_pipeline(ex):
                    await self._connect(ex)
                    if self.closed:
                        return
                self.backlog.popleft()
                if ex.error is not None:
                    self._answer_error(ex)
                else:
                    self._send(ex)
        except Exception:
            log.exception("router: connection failed")
            self.abort()
        finally:
            self._pump_task = None
            if not self.closed:
                self._resume("backlog")

    async def _resolve(self, ex: Exchange) -> Destination | None:
        assert ex.target is not None
        try:
            return await self.ctx.lookup.resolve(ex.target, ex.api_key)
        except APIError as err:
            ex.error = err
        except OperationFailure as failure:  # e.g. the sandbox's node is down
            ex.error = self.ctx.http_error(failure)
        except Exception:
            log.exception("router: looking up %s failed", ex.target)
            ex.error = ServerError("internal router error")
        return None

    async def _connect(self, ex: Exchange) -> None:
        assert ex.dest is not None
        old, self.upstream = self.upstream, None
        if old is not None:
            old.close()
        self._resume("upstream")
        try:
            upstream = await open_upstream(self, ex.dest, self.ctx.connect_timeout)
        except BadGateway as err:
            ex.error = err
            return
        except OperationFailure as failure:  # the sandbox's node did not answer
            ex.error = self.ctx.http_error(failure)
            return
        if self.closed:
            upstream.abort()
            return
        self.upstream = upstream
        self._upstream_eof = False
        if self._write_paused and upstream.transport is not None:
            upstream.transport.pause_reading()

    def _answer_error(self, ex: Exchange) -> None:
        assert ex.error is not None and self.transport is not None
        close = ex.upgrade or not ex.body_done or not ex.keep_alive or self._eof or self.draining
        self.transport.write(error_response(ex.error, close=close))
        if not close:
            return
        if ex.body_done or ex.upgrade:
            self._close()
        else:  # read (and drop) the rest of the body, so the client sees the answer, not a reset
            self.closing = True
            self.backlog.clear()
            self.loop.call_later(DRAIN_S, self._close)

    # responses (called by the upstream and its framing) -----------------------------------
    def upstream_data(self, upstream: UpstreamConnection, data: bytes) -> None:
        if upstream is not self.upstream or self.transport is None:
            return
        mode = self.mode
        if mode == TUNNEL or mode == OPAQUE:
            self.transport.write(data)
        elif self.inflight:
            self.transport.write(data)
            upstream.framing.feed(data, self.inflight[0].is_head)
        else:  # nothing was asked: an idle server talking before it hangs up
            upstream.close()

    def response_complete(self, keep_alive: bool) -> None:
        if not self.inflight:
            return
        ex = self.inflight.popleft()
        self.last_active = self.loop.time()
        if not (keep_alive and ex.keep_alive):  # the server (or the client) ends the connection
            self._close()
            return
        if self.mode == UPGRADING and ex.upgrade:  # upgrade refused: back to plain HTTP
            self.mode = HTTP
            held, self._held = b"".join(self._held), []
            self.loop.call_soon(self._replay, held)
        if not self.inflight:
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            if (self._eof or self.draining) and not self.backlog and self.receiving is None:
                self._close()

    def _replay(self, held: bytes) -> None:
        if held and not self.closed:
            self.data_received(held)
        self._resume("upgrade")

    def response_upgraded(self) -> None:
        if self.inflight:
            self.inflight.popleft()
        self.mode = TUNNEL
        if self.upstream is not None:
            for chunk in self._held:
                self.upstream.write(chunk)
            if self._eof and self.upstream.transport is not None and self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
        self._held = []
        self._resume("upgrade")

    def response_unparseable(self) -> None:
        dest = self.inflight[0].dest if self.inflight else None
        log.warning("router: unparseable response from %s; relaying it raw", dest)
        self.mode = OPAQUE
        self._pause("opaque")

    def upstream_eof(self, upstream: UpstreamConnection) -> bool:
        if upstream is not self.upstream:
            return False
        self._upstream_eof = True
        if self.mode == TUNNEL and not self._eof and self.transport is not None:
            if self.transport.can_write_eof():
                self.transport.write_eof()
                return True
        return False

    def upstream_lost(self, upstream: UpstreamConnection) -> None:
        if upstream is not self.upstream:
            return
        self.upstream = None
        self._resume("upstream")
        if self.closed or self.transport is None:
            return
        if self.mode != HTTP or (self.inflight and upstream.framing.in_message):
            self._close()  # a tunnel ended, or a response ran to (or was cut at) EOF
        elif self.inflight:
            dest = self.inflight[0].dest
            where = f"port {dest.port} in sandbox {dest.sandbox_id}" if dest else "the sandbox"
            error = BadGateway(f"{where} closed the connection without answering")
            self.transport.write(error_response(error, close=True))
            self._close()

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self._pause("upstream")
        else:
            self._resume("upstream")

    # housekeeping -------------------------------------------------------------------------
    def _pause(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def _fail(self, error: APIError) -> None:
        """A request we cannot parse: answer (after earlier responses would be wrong, so now) and close."""
        if self.transport is not None and not self.closed:
            if not self.inflight:
                self.transport.write(error_response(error, close=True))
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.upstream is not None:
            self.upstream.close()
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def shutdown(self) -> None:
        """The router is stopping: close now when idle, else after the response in progress."""
        self.draining = True
        if not (self.inflight or self.backlog or self.receiving) and self.mode == HTTP:
            self._close()

    def abort(self) -> None:
        self.closed = True
        if self.upstream is not None:
            self.upstream.abort()
        if self.transport is not None:
            self.transport.abort()

    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        idle = self.ctx.idle_timeout
        busy = self.mode != HTTP or self.inflight or self.backlog or self.receiving is not None
        wait = idle
        if not busy:
            elapsed = self.loop.time() - self.last_active
            if elapsed >= idle:
                self._close()
                return
            wait = idle - elapsed
        self._timer = self.loop.call_later(wait, self._check_idle)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.closed or self.mode != HTTP or self.receiving is not None or self._head_bytes == 0:
            return
        if self._paused:  # we stopped reading (a request ahead is waiting): not the client's doing
            self._head_timer = self.loop.call_later(self.ctx.head_timeout, self._head_timed_out)
            return
        self._fail(APIError("request head not complete in time", status_code=408))
