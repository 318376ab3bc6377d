"""What one execution produced: logs, rich items, error, count; capped, and optionally streamed live.

Both kernels feed an :class:`Execution`; ``/execute`` turns it into the result body, ``/execute/async``
reads its live queue of stdout/stderr events while it runs.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from .config import MAX_ITEMS_BYTES, MAX_LOG_BYTES

StreamName = Literal["stdout", "stderr"]
EventType = Literal["stdout", "stderr", "error", "exit"]

# Jupyter mime type -> field of a wire item (leap0 CodeExecutionOutput).
MIME_FIELDS: dict[str, str] = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}
_ITEM_FIELDS = (*MIME_FIELDS.values(), "extra")
_BASE64_FIELDS = frozenset({"png", "jpeg", "pdf"})

# Many tiny writes (a TypeScript loop of console.log) must not become millions of list entries:
# past this many, the latest ones are joined into one.
_MAX_CHUNKS = 1000

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def truncation_marker(dropped_bytes: int) -> str:
    return f"\n[output truncated: {dropped_bytes} bytes dropped]\n"


@dataclass(frozen=True, slots=True)
class Event:
    """A live event of ``/execute/async``: ``{type, data, code?}`` on the wire."""

    type: EventType
    data: str = ""
    code: int | None = None

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "data": self.data}
        if self.code is not None:
            body["code"] = self.code
        return body


class LiveEvents:
    """The events ``/execute/async`` has yet to send; stdout/stderr text the client has not taken
    yet is merged into one pending event, so a slow client costs no more than the output cap."""

    def __init__(self) -> None:
        self._pending: deque[tuple[EventType, list[str], int | None]] = deque()
        self._ready = asyncio.Event()

    def put(self, event: Event) -> None:
        last = self._pending[-1] if self._pending else None
        if last is not None and event.type in ("stdout", "stderr") and last[0] == event.type:
            last[1].append(event.data)
        else:
            self._pending.append((event.type, [event.data], event.code))
        self._ready.set()

    async def get(self, timeout_s: float) -> Event | None:
        """The next event, or None if none came within ``timeout_s``."""
        while not self._pending:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            except TimeoutError:
                return None
        kind, parts, code = self._pending.popleft()
        return Event(kind, "".join(parts), code)


def _append_chunk(chunks: list[str], text: str) -> None:
    chunks.append(text)
    if len(chunks) >= 2 * _MAX_CHUNKS:
        chunks[_MAX_CHUNKS:] = ["".join(chunks[_MAX_CHUNKS:])]


def mime_bundle_to_item(data: dict[str, Any], *, primary: bool) -> dict[str, Any]:
    """A Jupyter display bundle as a wire item; unknown mime types go to ``extra``."""
    item: dict[str, Any] = {"is_primary": primary}
    item.update(dict.fromkeys(_ITEM_FIELDS))
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        name = MIME_FIELDS.get(mime)
        if name is None:
            extra[mime] = value
            continue
        if name in _BASE64_FIELDS and isinstance(value, str):
            value = value.replace("\n", "")  # some producers wrap base64 lines
        elif name != "json" and isinstance(value, list):
            value = "".join(str(part) for part in value)  # nbformat-style multi-line strings
        item[name] = value
    if extra:
        item["extra"] = extra
    return item


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_size(v) for v in value)
    return 8


class Execution:
    """Collects one execution's output within the caps; ``live`` gets stdout/stderr as produced."""

    def __init__(self, context_id: str, *, live: bool = False) -> None:
        self.context_id = context_id
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.items: list[dict[str, Any]] = []
        self.error: dict[str, str] | None = None
        self.execution_count: int | None = None
        self.live: LiveEvents | None = LiveEvents() if live else None
        self.cancelled = asyncio.Event()  # the client went away: interrupt the running code
        self._log_bytes = 0
        self._log_dropped = {"stdout": 0, "stderr": 0}
        self._items_bytes = 0
        self._items_dropped = 0

    def stream(self, name: StreamName, text: str) -> None:
        if not text:
            return
        size = len(text.encode("utf-8", "replace"))
        room = MAX_LOG_BYTES - self._log_bytes
        if size > room:
            kept = text.encode("utf-8", "replace")[: max(room, 0)].decode("utf-8", "ignore")
            self._log_dropped[name] += size - len(kept.encode())
            text = kept
            size = len(kept.encode())
            if not text:
                return
        self._log_bytes += size
        _append_chunk(self.stdout if name == "stdout" else self.stderr, text)
        if self.live is not None:
            self.live.put(Event(name, text))

    def display(self, data: dict[str, Any], *, primary: bool) -> None:
        size = _size(data)
        room = MAX_ITEMS_BYTES - self._items_bytes
        if size > room:
            text = data.get("text/plain")
            self._items_dropped += size
            if not isinstance(text, str) or room < 1024:
                return
            # the value's text, cut, is still worth having (it may be the primary result)
            data = {"text/plain": text[: room - 100] + truncation_marker(len(text) - room + 100)}
            size = _size(data)
            self._items_dropped -= size
        item = mime_bundle_to_item(data, primary=primary)
        self._items_bytes += size
        self.items.append(item)

    def fail(self, name: str, value: str, traceback: str) -> None:
        traceback = strip_ansi(traceback) or f"{name}: {value}"
        if len(traceback) > MAX_LOG_BYTES:
            traceback = traceback[:MAX_LOG_BYTES] + truncation_marker(len(traceback) - MAX_LOG_BYTES)
        self.error = {"name": name, "value": strip_ansi(value)[:MAX_LOG_BYTES], "traceback": traceback}

    def finish(self) -> None:
        """Adds the truncation markers and closes the live stream with ``error``/``exit``."""
        for name in ("stdout", "stderr"):
            dropped = self._log_dropped[name]
            if dropped:
                marker = truncation_marker(dropped)
                (self.stdout if name == "stdout" else self.stderr).append(marker)
                if self.live is not None:
                    self.live.put(Event("stdout" if name == "stdout" else "stderr", marker))
        if self._items_dropped:
            self.stderr.append(f"[output truncated: {self._items_dropped} bytes of rich output dropped]\n")
        if self.live is not None:
            if self.error is not None:
                err = self.error
                self.live.put(Event("error", err["traceback"] or f"{err['name']}: {err['value']}"))
            self.live.put(Event("exit", "", 1 if self.error is not None else 0))

    def result(self) -> dict[str, Any]:
        return {
            "context_id": self.context_id,
            "items": self.items,
            "logs": {"stdout": self.stdout, "stderr": self.stderr},
            "error": self.error,
            "execution_count": self.execution_count,
        }
