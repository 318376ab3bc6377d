"""The HTTP side of a transform: HTTP/1.1 requests from the sandbox (TLS already terminated with
the sandbox's CA) are forwarded upstream over verified TLS, with ``strip_headers`` removed and
``inject_headers`` set. Request and response bodies stream through unchanged; in response
headers, any injected value is masked so an echoing upstream does not hand it to the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import h11

from atoll.network.policy import TransformRule
from atoll.network.tlsstream import TlsStream

REDACTED = b"[redacted by atoll]"
HOP_BY_HOP_EXPECT = b"expect"


class UpstreamFailed(RuntimeError):
    pass


def rewrite_request_headers(
    headers: list[tuple[bytes, bytes]], transform: TransformRule
) -> list[tuple[bytes, bytes]]:
    injected = [(k.lower().encode(), v.encode()) for k, v in transform.inject]
    drop = {s.encode() for s in transform.strip} | {k for k, _ in injected} | {HOP_BY_HOP_EXPECT}
    return [(k, v) for k, v in headers if k.lower() not in drop] + injected


def mask(headers: list[tuple[bytes, bytes]], secrets: list[bytes]) -> list[tuple[bytes, bytes]]:
    if not secrets:
        return headers
    out = []
    for key, value in headers:
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        out.append((key, value))
    return out


async def _next_event(
    conn: h11.Connection, stream: TlsStream
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.recv())
            continue
        return event


async def _raw_pipe(src: TlsStream, dst: TlsStream) -> None:
    while data := await src.recv():
        await dst.send(data)


async def serve(
    client: TlsStream,
    connect_upstream: Callable[[], Awaitable[TlsStream]],
    transform: TransformRule,
    *,
    on_request: Callable[[], None] | None = None,
) -> None:
    """Relay HTTP/1.1 exchanges until either side closes. The upstream is connected lazily, on the
    first request, so that a failure can be answered with a 502."""
    secrets = [v.encode() for _, v in transform.inject if v]
    down = h11.Connection(h11.SERVER)
    up_conn = h11.Connection(h11.CLIENT)
    upstream: TlsStream | None = None
    try:
        while True:
            event = await _next_event(down, client)
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            if on_request:
                on_request()
            if upstream is None:
                try:
                    upstream = await connect_upstream()
                except Exception as exc:
                    body = f"atoll egress proxy: upstream unavailable ({type(exc).__name__})\n".encode()
                    await client.send(
                        down.send(h11.Response(status_code=502, headers=[("content-length", str(len(body)))]))
                        + down.send(h11.Data(data=body))
                        + down.send(h11.EndOfMessage())
                    )
                    return
            if down.they_are_waiting_for_100_continue:
                await client.send(down.send(h11.InformationalResponse(status_code=100, headers=[])))
            request = h11.Request(
                method=event.method,
                target=event.target,
                headers=rewrite_request_headers(list(event.headers), transform),
                http_version=event.http_version,
            )
            await upstream.send(up_conn.send(request))
            while True:  # the request body
                part = await _next_event(down, client)
                if isinstance(part, h11.Data):
                    await upstream.send(up_conn.send(h11.Data(data=part.data)))
                elif isinstance(part, h11.EndOfMessage):
                    await upstream.send(up_conn.send(h11.EndOfMessage(headers=list(part.headers))))
                    break
                else:
                    return
            while True:  # the response
                reply = await _next_event(up_conn, upstream)
                if isinstance(reply, h11.InformationalResponse):
                    if reply.status_code == 101:
                        await client.send(
                            down.send(
                                h11.InformationalResponse(
                                    status_code=101, headers=mask(list(reply.headers), secrets)
                                )
                            )
                        )
                        await _switched(client, upstream, down, up_conn)
                        return
                    await client.send(
                        down.send(
                            h11.InformationalResponse(
                                status_code=reply.status_code, headers=mask(list(reply.headers), secrets)
                            )
                        )
                    )
                elif isinstance(reply, h11.Response):
                    await client.send(
                        down.send(
                            h11.Response(
                                status_code=reply.status_code,
                                headers=mask(list(reply.headers), secrets),
                                reason=reply.reason,
                                http_version=reply.http_version,
                            )
                        )
                    )
                elif isinstance(reply, h11.Data):
                    await client.send(down.send(h11.Data(data=reply.data)))
                elif isinstance(reply, h11.EndOfMessage):
                    await client.send(down.send(h11.EndOfMessage(headers=mask(list(reply.headers), secrets))))
                    break
                else:
                    return
            if down.our_state is h11.DONE and down.their_state is h11.DONE and up_conn.our_state is h11.DONE:
                down.start_next_cycle()
                up_conn.start_next_cycle()
            else:
                return
    except (h11.RemoteProtocolError, h11.LocalProtocolError, ConnectionError, OSError):
        return
    finally:
        if upstream is not None:
            await upstream.aclose()


async def _switched(client: TlsStream, upstream: TlsStream, down: h11.Connection, up: h11.Connection) -> None:
    """After a 101 (e.g. a WebSocket upgrade), bytes flow through as they are."""
    leftover_down, _ = down.trailing_data
    leftover_up, _ = up.trailing_data
    if leftover_down:
        await upstream.send(leftover_down)
    if leftover_up:
        await client.send(leftover_up)
    tasks = [
        asyncio.ensure_future(_raw_pipe(client, upstream)),
        asyncio.ensure_future(_raw_pipe(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
