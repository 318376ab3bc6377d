"""What a client's first bytes say about where it wants to go: the TLS ClientHello's SNI or the
HTTP/1 ``Host`` header. Pure parsers over untrusted bytes: every length is bounds-checked, and
anything malformed is "no name", never an exception."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_PEEK = 64 * 1024  # a ClientHello or a request head larger than this is refused
_HTTP_START = re.compile(rb"^[A-Z]{3,16} [^ \r\n]+ HTTP/1\.[01]\r\n")
_HTTP_PREFIX = re.compile(rb"^[A-Z]{1,16}( [^ \r\n]*( [A-Z0-9/.]*)?)?\r?$")


@dataclass(frozen=True)
class Sniffed:
    kind: Literal["tls", "http", "other"]
    name: str | None = None  # lower-case, no port, no trailing dot


def _name(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii").strip().lower().rstrip(".")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # an IPv6 literal
        return None
    text = text.split(":", 1)[0]
    if not text or not re.fullmatch(r"[a-z0-9._-]+", text):
        return None
    return text


def _client_hello_body(data: bytes) -> bytes | None:
    """The handshake message, reassembled from consecutive records; None when more is needed."""
    payload = bytearray()
    offset = 0
    while offset + 5 <= len(data):
        if data[offset] != 0x16:
            return b""  # not a handshake record: treated as "no name"
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if offset + 5 + length > len(data):
            return None
        payload += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(payload) >= 4:
            if payload[0] != 0x01:
                return b""
            needed = int.from_bytes(payload[1:4], "big")
            if len(payload) >= 4 + needed:
                return bytes(payload[4 : 4 + needed])
    return None


def server_name(hello: bytes) -> str | None:
    """SNI from a ClientHello body (after the 4-byte handshake header)."""
    try:
        pos = 2 + 32  # client_version, random
        pos += 1 + hello[pos]  # session_id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + hello[pos]  # compression_methods
        end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(hello)):
            ext_type = int.from_bytes(hello[pos : pos + 2], "big")
            ext_len = int.from_bytes(hello[pos + 2 : pos + 4], "big")
            body = hello[pos + 4 : pos + 4 + ext_len]
            pos += 4 + ext_len
            if ext_type != 0:
                continue
            inner = 2
            while inner + 3 <= len(body):
                name_type = body[inner]
                name_len = int.from_bytes(body[inner + 1 : inner + 3], "big")
                if name_type == 0:
                    return _name(body[inner + 3 : inner + 3 + name_len])
                inner += 3 + name_len
            return None
    except IndexError:
        return None
    return None


def sniff(data: bytes) -> Sniffed | None:
    """Classify the first bytes a client sent; None means "send more" (up to ``MAX_PEEK``)."""
    if not data:
        return None
    if data[0] == 0x16:
        if len(data) < 3:
            return None
        if data[1] != 0x03:
            return Sniffed("other")
        body = _client_hello_body(data)
        if body is None:
            return None if len(data) < MAX_PEEK else Sniffed("tls")
        return Sniffed("tls", server_name(body) if body else None)
    if _HTTP_START.match(data):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None if len(data) < MAX_PEEK else Sniffed("http")
        for line in data[:end].split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == b"host":
                return Sniffed("http", _name(value))
        return Sniffed("http")
    if len(data) < MAX_PEEK and _HTTP_PREFIX.match(data):
        return None  # the start of a request line, cut short
    return Sniffed("other")
