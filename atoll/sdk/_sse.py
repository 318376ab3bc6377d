"""Server-sent events (``text/event-stream``) decoded from raw chunks. Pure, no I/O.

Only the part of the format (WHATWG HTML, "server-sent events") that a one-way JSON stream needs:
``data:`` lines (several in one event are joined with ``\\n``), comment lines, and blank lines
ending an event; ``event:``, ``id:`` and ``retry:`` are read past. Chunks may split anywhere,
even inside a line, a ``\\r\\n`` pair or a UTF-8 character.
"""

from __future__ import annotations

import codecs
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Feed it the body's chunks in order; it hands back the data of each completed event."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last line break: the start of a line not yet complete
        self._parts: list[str] = []  # more of that line, from chunks without a line break (a long
        # line, e.g. a big output event, arrives in many chunks: joined once, not once a chunk)
        self._data: list[str] | None = None  # the data lines of the event being read, if any

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event this chunk completes (often none, sometimes several)."""
        text = self._text.decode(chunk)
        if "\n" not in text and "\r" not in text and not self._pending.endswith("\r"):
            self._parts.append(text)
            return []
        return self._lines(text, final=False)

    def close(self) -> list[str]:
        """At the end of the body: a last event the server did not end with a blank line is kept,
        since a stream cut right after its final event should not lose it."""
        events = self._lines(self._text.decode(b"", final=True), final=True)
        if self._data is not None:
            events.append("\n".join(self._data))
            self._data = None
        return events

    def _lines(self, text: str, *, final: bool) -> list[str]:
        text = self._pending + "".join(self._parts) + text
        self._parts.clear()
        # A lone trailing "\r" may be the first half of "\r\n": wait for the next chunk to tell.
        hold = 1 if text.endswith("\r") and not final else 0
        lines = _LINE_BREAK.split(text[: len(text) - hold])
        self._pending = lines.pop() + text[len(text) - hold :]
        if final and self._pending:
            lines.append(self._pending)
            self._pending = ""
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data is not None:
                    events.append("\n".join(self._data))
                    self._data = None
                continue
            if line.startswith(":"):
                continue  # a comment (servers send them as keep-alives)
            field, colon, value = line.partition(":")
            if field == "data":
                value = value[1:] if colon and value.startswith(" ") else value
                if self._data is None:
                    self._data = []
                self._data.append(value)
        return events
