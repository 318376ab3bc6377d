"""``multipart/form-data`` as the filesystem API uses it, both ways, for the server and the SDK.

Each part is one file: the part's field ``name`` is the file's path and its body the file's
bytes (``write-files`` requests, ``read-files`` answers). ``MultipartParser`` is incremental, so
the server writes every part to disk as it arrives and never holds a whole upload; it keeps at
most one boundary's length of look-behind plus the chunk it was fed.

Names are written as browsers and httpx do (raw UTF-8 inside a quoted string), with ``"`` and
``\\`` backslash-escaped (what RFC 2045 parsers such as Python's ``email`` read back) and control
characters as ``%XX``. The parser reads either escape style, and RFC 2231 ``name*=``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_HEADER_BYTES = 16 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PERCENT_CONTROL = re.compile(r"%(0[0-9A-Fa-f]|1[0-9A-Fa-f]|7[Ff]|22)")


class MultipartError(ValueError):
    """The body is not the multipart document its content type announced."""


def new_boundary() -> str:
    return "atoll-" + secrets.token_hex(16)


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a ``multipart/form-data`` content type."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError(f"expected multipart/form-data, got {kind.strip() or 'no content type'}")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            boundary = value.strip().strip('"')
            if len(boundary) > 200:
                raise MultipartError("multipart boundary is too long")
            return boundary
    raise MultipartError("multipart/form-data without a boundary")


def quote_name(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", escaped)


def part_header(name: str, *, filename: str | None = None) -> bytes:
    """The header block of one file part (without the boundary line)."""
    disposition = f'form-data; name="{quote_name(name)}"'
    if filename is not None:
        disposition += f'; filename="{quote_name(filename)}"'
    return (f"Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n").encode(
        "utf-8", "surrogateescape"
    )


def _params(value: str) -> dict[str, str]:
    """Parameters of a header value, honouring quoted strings with backslash escapes."""
    params: dict[str, str] = {}
    i = value.find(";")
    while 0 <= i < len(value):
        i += 1
        while i < len(value) and value[i] in " \t":
            i += 1
        eq = value.find("=", i)
        if eq < 0:
            break
        key = value[i:eq].strip().lower()
        i = eq + 1
        if i < len(value) and value[i] == '"':
            out: list[str] = []
            i += 1
            while i < len(value) and value[i] != '"':
                if value[i] == "\\" and i + 1 < len(value):
                    i += 1
                out.append(value[i])
                i += 1
            params[key] = "".join(out)
            i = value.find(";", i)
        else:
            end = value.find(";", i)
            params[key] = value[i : end if end >= 0 else len(value)].strip()
            i = end
    return params


def field_name(disposition: str) -> str | None:
    """The field name in a Content-Disposition value (``name*=`` wins over ``name=``)."""
    params = _params(disposition)
    extended = params.get("name*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _, _, encoded = rest.partition("'")
        return unquote(encoded, encoding=charset or "utf-8", errors="surrogateescape")
    name = params.get("name")
    if name is None:
        return None
    return _PERCENT_CONTROL.sub(lambda m: chr(int(m.group(1), 16)), name)


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return field_name(self.headers.get("content-disposition", ""))

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


# events: ("part", Part) when a part's headers are complete, ("data", bytes) for its body,
# ("end", None) when it is over
Event = tuple[str, "Part | bytes | None"]


class MultipartParser:
    _PREAMBLE, _HEADERS, _BODY, _AFTER, _DONE = range(5)

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._body_delimiter = b"\r\n" + self._delimiter
        self._buffer = bytearray()
        self._state = self._PREAMBLE

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> Iterator[Event]:
        self._buffer += data
        while True:
            if self._state == self._PREAMBLE:
                index = self._buffer.find(self._delimiter)
                if index < 0:
                    # keep only what could still be the start of the first delimiter
                    del self._buffer[: max(0, len(self._buffer) - len(self._delimiter))]
                    return
                del self._buffer[: index + len(self._delimiter)]
                self._state = self._AFTER
            elif self._state == self._AFTER:
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] == b"--":
                    self._state = self._DONE
                    self._buffer.clear()
                    return
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 1024:
                        raise MultipartError("malformed multipart delimiter line")
                    return
                if self._buffer[:end].strip(b" \t"):
                    raise MultipartError("malformed multipart delimiter line")
                del self._buffer[: end + 2]
                self._state = self._HEADERS
            elif self._state == self._HEADERS:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEADER_BYTES:
                        raise MultipartError("multipart part headers are too large")
                    return
                block = bytes(self._buffer[:end]).decode("utf-8", "surrogateescape")
                del self._buffer[: end + 4]
                part = Part()
                for line in block.split("\r\n"):
                    key, sep, value = line.partition(":")
                    if not sep:
                        raise MultipartError(f"malformed multipart header line {line[:80]!r}")
                    part.headers[key.strip().lower()] = value.strip()
                self._state = self._BODY
                yield ("part", part)
            elif self._state == self._BODY:
                index = self._buffer.find(self._body_delimiter)
                if index < 0:
                    keep = len(self._body_delimiter) - 1
                    if len(self._buffer) > keep:
                        chunk = bytes(self._buffer[: len(self._buffer) - keep])
                        del self._buffer[: len(chunk)]
                        yield ("data", chunk)
                    return
                if index:
                    yield ("data", bytes(self._buffer[:index]))
                del self._buffer[: index + len(self._body_delimiter)]
                self._state = self._AFTER
                yield ("end", None)
            else:  # done: the epilogue is ignored
                self._buffer.clear()
                return

    def close(self) -> None:
        if self._state != self._DONE:
            raise MultipartError("multipart body ended before its closing boundary")


def parse(content_type: str, body: bytes) -> dict[str, bytes]:
    """A whole multipart document as {name: bytes}; every part must be application/octet-stream."""
    parser = MultipartParser(boundary_of(content_type))
    result: dict[str, bytes] = {}
    current: Part | None = None
    chunks: list[bytes] = []
    for kind, value in parser.feed(body):
        if kind == "part":
            assert isinstance(value, Part)
            current, chunks = value, []
        elif kind == "data":
            assert isinstance(value, bytes)
            chunks.append(value)
        elif current is not None:
            name = current.name
            if name is None:
                raise MultipartError("a multipart part has no name")
            if current.content_type != "application/octet-stream":
                raise MultipartError(f"part {name!r} is {current.content_type or 'untyped'}, not file bytes")
            result[name] = b"".join(chunks)
            current = None
    parser.close()
    return result
