"""A process's events as bytes on the wire: SSE (``spec/processes.md``, the default) or Atoll's
framed binary form (an extension, asked for with ``Accept: application/octet-stream``).

SSE costs the most where output is largest: each chunk is decoded, JSON-escaped (``yes``'s
output grows by half) and parsed again by the client. The framed form carries the pipe's bytes
as they are, behind a fixed 16-byte header (``FRAME_HEADER``: kind, payload length, seq), so
neither side touches the data; it is what the SDK asks for. Kinds: ``o`` stdout, ``e`` stderr
(payload: the bytes), ``x`` exit (payload: the exit code, int32 little-endian), ``t`` truncated,
``k`` keepalive (no payload, seq 0).
"""

from __future__ import annotations

import base64
import codecs
import json
import struct
from typing import Any

from atoll.runtime.agent_processes import Event

FRAMES_MEDIA_TYPE = "application/octet-stream"
FRAME_HEADER = struct.Struct("<c3xIQ")  # kind, payload length, seq (0: none)
_KINDS = {"stdout": b"o", "stderr": b"e", "exit": b"x", "truncated": b"t", "keepalive": b"k"}
_EXIT_CODE = struct.Struct("<i")


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def wants_frames(accept: str | None) -> bool:
    """Whether the client asked for the framed form (``Accept: application/octet-stream``)."""
    if not accept:
        return False
    return any(part.split(";", 1)[0].strip().lower() == FRAMES_MEDIA_TYPE for part in accept.split(","))


class EventEncoder:
    """Events as SSE frames: text decoded per stream (a character split between two pipe reads
    stays whole), or base64 with ``binary``. ``ended`` once the exit event went out."""

    media_type = "text/event-stream"

    def __init__(self, *, binary: bool) -> None:
        self.binary = binary
        self.ended = False
        self._decoders = {t: codecs.getincrementaldecoder("utf-8")("replace") for t in ("stdout", "stderr")}

    def encode(self, event: Event) -> bytes:
        if event.type == "keepalive":
            return b": keepalive\n\n"
        payload: dict[str, Any] = {"type": event.type}
        if event.seq is not None:
            payload["seq"] = event.seq
        if event.type in self._decoders:
            if self.binary:
                payload["data"] = base64.b64encode(event.data).decode()
            else:
                payload["data"] = self._decoders[event.type].decode(event.data)
        if event.type == "exit":
            payload["exit_code"] = event.exit_code
            self.ended = True
        return sse(payload)


class FrameEncoder:
    """Events as binary frames: the output's bytes untouched (see the module's docstring)."""

    media_type = FRAMES_MEDIA_TYPE

    def __init__(self) -> None:
        self.ended = False

    def encode(self, event: Event) -> bytes:
        payload = event.data
        if event.type == "exit":
            payload = _EXIT_CODE.pack(event.exit_code or 0)
            self.ended = True
        elif event.type not in ("stdout", "stderr"):
            payload = b""
        return FRAME_HEADER.pack(_KINDS[event.type], len(payload), event.seq or 0) + payload
