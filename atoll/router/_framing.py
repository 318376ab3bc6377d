"""Where each response ends in the raw byte stream coming back from a sandbox.

The router forwards response bytes untouched; this only watches them, so it knows when the
connection is free for the next request, whether the server keeps it open, and when a
``101 Switching Protocols`` turns it into a tunnel. llhttp (via httptools) does the parsing.
A response to HEAD has no body whatever its headers say, which llhttp cannot know: it ends at
its blank line. Interim ``1xx`` answers (``100 Continue``) are passed on and not counted."""

from __future__ import annotations

from typing import Protocol

import httptools

MAX_HEAD = 64 * 1024


class ResponseSink(Protocol):
    def response_complete(self, keep_alive: bool) -> None: ...
    def response_upgraded(self) -> None: ...
    def response_unparseable(self) -> None: ...


class _Head:
    """Status, version and keep-alive of one response head (fed nothing but the head)."""

    __slots__ = ("connection", "parser", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.connection = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection":
            self.connection = value.lower()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def keep_alive(self) -> bool:
        if self.parser.get_http_version() == "1.0":
            return b"keep-alive" in self.connection
        return b"close" not in self.connection


class ResponseFraming:
    __slots__ = ("_head_buf", "_parser", "_sink", "_status", "in_message")

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._head_buf = b""
        self.in_message = False  # some bytes of a response seen, its end not yet

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.in_message = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        self.in_message = False
        status = self._status
        if 100 <= status < 200:  # interim (the 101 case is reported by the upgrade exception)
            return
        self._sink.response_complete(self._parser.should_keep_alive())

    def feed(self, data: bytes, head_only: bool) -> None:
        if head_only:
            self._feed_head_only(data)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.in_message = False
            self._sink.response_upgraded()
        except httptools.HttpParserError:
            if self._status == 101:
                self._sink.response_upgraded()
            else:
                self._sink.response_unparseable()

    def _feed_head_only(self, data: bytes) -> None:
        buf = self._head_buf + data
        while buf:
            self.in_message = True
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._sink.response_unparseable()
                    return
                self._head_buf = buf
                return
            head = _Head()
            try:
                head.parser.feed_data(buf[: end + 4])
            except httptools.HttpParserError:
                self._sink.response_unparseable()
                return
            buf = buf[end + 4 :]
            if 100 <= head.status < 200:
                continue
            self._head_buf = b""
            self.in_message = False
            if buf:  # nothing else was asked for on this connection
                self._sink.response_unparseable()
                return
            self._sink.response_complete(head.keep_alive())
            return
        self._head_buf = b""
