"""Request limits: what one request may make the server hold or hand to the kernel.

Every number here is in the one table of docs/limits.md. Header sections are bounded in the
HTTP protocol itself (``LimitedHttpToolsProtocol``: 431 before the ASGI app runs); JSON bodies
by ``BodyLimitMiddleware`` (413, refused by ``Content-Length`` before a byte of the body is read,
or cut off at the limit when the length is not announced); the rest in the request schemas
(400 naming the field). The uploads (``write-file``, ``write-files``) stream to the sandbox's
disk and are bounded by it instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from atoll._conn_guard import Ticket, process_guard, release_on_lost

KIB = 1024
MIB = 1024 * KIB
HEADER_SECTION_MAX_BYTES = 64 * KIB  # request line and headers together
JSON_BODY_MAX_BYTES = 4 * MIB
ENV_MAX_COUNT = 1024  # variables in one env_vars / envs
ENV_NAME_MAX_CHARS = 256
ENV_VALUE_MAX_CHARS = 65536
ENV_MAX_TOTAL_BYTES = 256 * KIB  # names and values, UTF-8, "NAME=value\0" each
# execve(2) takes no single argument longer than MAX_ARG_STRLEN (32 pages): the command is one
COMMAND_MAX_BYTES = 128 * KIB - 1
STREAMED_SUFFIXES = ("/filesystem/write-file", "/filesystem/write-files")
_REFUSAL_LINGER_S = 2.0
# a request line and headers not complete this long after the connection opened (or after their
# first byte, between requests) are a slow-loris: the connection is closed
HEADER_TIMEOUT_S = 10.0


def check_env(values: Mapping[str, str]) -> Mapping[str, str]:
    """Count and total size of one set of environment variables; NUL nowhere (execve would cut
    the string there, silently)."""
    if len(values) > ENV_MAX_COUNT:
        raise ValueError(f"at most {ENV_MAX_COUNT} variables (got {len(values)})")
    total = 0
    for name, value in values.items():
        if "\x00" in value:
            raise ValueError(f"the value of {name!r} contains a NUL byte")
        total += len(name.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass")) + 2
    if total > ENV_MAX_TOTAL_BYTES:
        raise ValueError(f"at most {ENV_MAX_TOTAL_BYTES} bytes in all, names and values (got {total})")
    return values


def check_text(value: str, *, max_bytes: int | None = None) -> str:
    """A string handed to the kernel: UTF-8 encodable (no lone surrogates), no NUL, bounded."""
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"at most {max_bytes} bytes of UTF-8 (got {size})")
    return value


def check_command(value: str) -> str:
    return check_text(value, max_bytes=COMMAND_MAX_BYTES)


def _json_response(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"message": message}).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimitMiddleware:
    """413 for a JSON body past ``JSON_BODY_MAX_BYTES``: by its ``Content-Length`` before any of
    it is read; without one (chunked), after reading no more than the limit. The rest of a
    refused body is read and dropped by the server, never held."""

    def __init__(self, app: ASGIApp, max_bytes: int = JSON_BODY_MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path.rstrip("/").endswith(STREAMED_SUFFIXES):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await self._refuse(send, declared)
                return
            await self.app(scope, receive, send)  # the HTTP parser holds the body to its length
            return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        held: list[Message] = []
        size = 0
        while True:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, None)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        got = f"{declared} bytes" if declared is not None else "more"
        start, body = _json_response(
            413, f"request body too large: at most {self.max_bytes} bytes (got {got})"
        )
        await send(start)
        await send(body)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on what a client that never finishes a request
    can hold:

    - the header section: past ``HEADER_SECTION_MAX_BYTES`` (request line and headers, since the
      previous request's headers ended) the client gets 431 and the connection is closed; the
      parser never holds more than the limit and one read (httptools buffers any size);
    - time: a request head not complete ``HEADER_TIMEOUT_S`` after the connection opened or
      after its first byte arrived is closed (slow-loris); between requests uvicorn's
      keep-alive timeout applies;
    - count: connections are admitted per client address (``conn_guard``), so one address
      cannot take the process's fds.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._in_body = False
        self._refused = False
        self._ticket: Ticket | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._ticket = process_guard().admit_transport(transport)
        if self._ticket is None:
            self._refused = True  # aborted: connection_lost follows, nothing else
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._ticket is None:
            return  # refused at accept: uvicorn never saw it
        self._ticket.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the connection closes
        counted = not self._in_body
        if counted:
            if self._header_bytes == 0 and self._head_timer is None:
                self._arm_head_timer()
            self._header_bytes += len(data)
        super().data_received(data)
        if counted and not self._in_body and self._header_bytes > HEADER_SECTION_MAX_BYTES:
            self._refuse()

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._header_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        ticket, self._ticket = self._ticket, None
        if ticket is not None:  # the WebSocket protocol owns the connection now
            release_on_lost(self.transport.get_protocol(), ticket)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_body and not self.transport.is_closing():
            self.transport.abort()  # no answer: the client is not reading one

    def _refuse(self) -> None:
        self._refused = True
        self._cancel_head_timer()
        message = f"request header section too large: at most {HEADER_SECTION_MAX_BYTES} bytes".encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
        )
        # half-close, then drop what still arrives for a moment: closing at once would reset the
        # connection and could destroy the answer before the client reads it
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_REFUSAL_LINGER_S, self.transport.close)
