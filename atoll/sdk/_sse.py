"""Server-sent events (``text/event-stream``) decoded from raw chunks. Pure, no I/O.

Only the part of the format (WHATWG HTML, "server-sent events") that a one-way JSON stream needs:
``data:`` lines (several in one event are joined with ``\\n``), comment lines, and blank lines
ending an event; ``event:``, ``id:`` and ``retry:`` are read past. Chunks may split anywhere,
even inside a line, a ``\\r\\n`` pair or a UTF-8 character.

It works on bytes: line breaks are found with ``bytes.find`` (memchr), each byte of the body is
scanned once however it is cut, and only an event's data is decoded (UTF-8, invalid bytes
replaced), once, when the event is complete. Big events (a process's output) cost a copy and a
decode, not a text split per chunk.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed it the body's chunks in order; it hands back the data of each completed event."""

    def __init__(self) -> None:
        self._buffer = bytearray()  # from the start of the line not yet complete
        self._scanned = 0  # bytes of the buffer known to hold no line break
        self._data: list[bytes] | None = None  # the data lines of the event being read, if any

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event this chunk completes (often none, sometimes several)."""
        self._buffer += chunk
        return self._lines(final=False)

    def close(self) -> list[str]:
        """At the end of the body: a last event the server did not end with a blank line is kept,
        since a stream cut right after its final event should not lose it."""
        events = self._lines(final=True)
        if self._buffer:
            self._line(bytes(self._buffer), events)
            self._buffer.clear()
        if self._data is not None:
            events.append(_text(self._data))
            self._data = None
        return events

    def _lines(self, *, final: bool) -> list[str]:
        buffer, events = self._buffer, list[str]()
        at = self._scanned
        start = 0
        next_cr = buffer.find(b"\r", at)
        if next_cr < 0:  # the usual body: "\n" alone, split at once (many small events are cheap)
            end = buffer.rfind(b"\n", at)
            if end >= 0:
                with memoryview(buffer) as view:
                    lines = bytes(view[:end]).split(b"\n")
                for line in lines:
                    self._line(line, events)
                del buffer[: end + 1]
            self._scanned = len(buffer)
            return events
        while True:
            if 0 <= next_cr < at:
                next_cr = buffer.find(b"\r", at)
            lf = buffer.find(b"\n", at)
            if next_cr >= 0 and (lf < 0 or next_cr < lf):
                if next_cr + 1 == len(buffer) and not final:
                    break  # a lone trailing "\r" may be the first half of "\r\n": the next chunk tells
                end, after = next_cr, next_cr + (2 if lf == next_cr + 1 else 1)
            elif lf >= 0:
                end, after = lf, lf + 1
            else:
                break
            with memoryview(buffer) as view:
                line = bytes(view[start:end])
            self._line(line, events)
            start = at = after
        del buffer[:start]
        self._scanned = at - start if 0 <= next_cr and next_cr + 1 == len(buffer) + start else len(buffer)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data is not None:
                events.append(_text(self._data))
                self._data = None
            return
        if line.startswith(b":"):
            return  # a comment (servers send them as keep-alives)
        field, colon, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if colon and value.startswith(b" ") else value
            if self._data is None:
                self._data = []
            self._data.append(value)


def _text(data: list[bytes]) -> str:
    return (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
