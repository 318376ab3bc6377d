"""The host side of the agent's background processes (``agent.c``, "ATL2" requests).

The agent keeps each background process in a bounded table and its output in a bounded ring of
events inside the sandbox; Atoll asks for what it needs on one connection per request: start,
list, the events since a seq (then live until the process ends), stdin, a signal. Everything the
agent says is untrusted: lines and lengths are bounded, numbers checked, and a malformed reply
ends the conversation (``AgentProtocolError``).

Under gVisor the agent's replies are paced (``pace``): after every ``pace`` bytes of a reply it
waits for one ``A``, counted over the whole connection, so that runsc's port forwarding never
has more than that waiting to be read. ``AgentLink`` acknowledges at exactly those offsets, and
reads no more than up to the next one, whatever the framing. Each paced chunk starts with ``+``
(counted); between a chunk's end and the next ``+`` come the fillers the agent sends while it
waits for its ``A`` (``.``, not counted), which are skipped: runsc's port forwarding can miss
that a chunk's last bytes arrived, and would hold them (and so the stream) until more came.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from atoll._exceptions import AgentProtocolError
from atoll.runtime import agent_errors
from atoll.runtime.agent import CHUNK_MARK, FILLER, send_early

MAX_LINE = 4096
MAX_EVENT_BYTES = 65536  # agent.c CHUNK: one pipe read (or several, merged while unread)
READ_BYTES = 262144  # one socket read, unpaced: a few whole events (the buffer holds at most that)
# what the event loop reads ahead of the relay (it pauses the socket past twice that): enough
# that a busy host's scheduling delays do not stall the agent behind a full socket
READ_AHEAD_BYTES = 262144
MAX_META_BYTES = 16384  # agent.c MAX_META
MAX_PROCESSES = 128  # agent.c MAX_PROCS
REPLY_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class StartRequest:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stdin: bool = False
    timeout_s: int = 0  # 0: no limit
    meta: bytes = b""  # kept by the agent, handed back by ``list`` (Atoll's description of it)
    ring_bytes: int = 8 << 20
    # the ring waits for its readers instead of dropping what they have not read (the process
    # waits in turn): for a foreground command, whose caller wants all of its output
    hold: bool = False


@dataclass(frozen=True, kw_only=True)
class ProcessInfo:
    pid: int
    running: bool
    exit_code: int | None
    started_ms: int
    ended_ms: int | None
    meta: bytes


@dataclass(frozen=True, kw_only=True)
class Event:
    type: str  # "stdout" | "stderr" | "exit" | "truncated"
    seq: int | None = None
    data: bytes = b""
    exit_code: int | None = None


def _payload(fields: Sequence[bytes], raw: bytes = b"") -> bytes:
    body = b"".join(f + b"\0" for f in fields) + raw
    return b"ATL2" + struct.pack("<I", len(body)) + body


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class AgentLink:
    """One connection to the agent (which this owns and closes), read with pacing."""

    def __init__(self, sock: socket.socket, *, pace: int = 0) -> None:
        self._sock = sock
        self._pace = pace
        self._unacked = 0
        self._chunk_start = True  # paced: the next bytes are fillers, then a chunk's mark
        # paced chunks carry marks: known from the connection's first byte (an agent from before
        # the marks, still running in a sandbox started by an older Atoll, sends none)
        self._marked: bool | None = None
        self._buffer = bytearray()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, fields: Sequence[bytes], raw: bytes = b"") -> None:
        self._sock.setblocking(False)
        unsent = send_early(self._sock, _payload(fields, raw))
        self._reader, self._writer = await asyncio.open_unix_connection(
            sock=self._sock, limit=READ_AHEAD_BYTES
        )
        if unsent:
            self._writer.write(unsent)
            await self._writer.drain()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self._sock.close()

    def abort(self) -> None:
        """End the conversation now (e.g. before a checkpoint): the reader sees its end."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    async def _fill(self) -> None:
        assert self._reader is not None and self._writer is not None
        want = READ_BYTES if not self._pace else self._pace - self._unacked
        chunk = await self._reader.read(want)
        if not chunk:
            raise ConnectionResetError("the agent closed the connection")
        if self._marked is None:
            self._marked = chunk[:1] == CHUNK_MARK
        if self._pace and self._marked and self._chunk_start:
            chunk = chunk.lstrip(FILLER)
            if not chunk:
                return
            if chunk[:1] == CHUNK_MARK:  # (else an unpaced reply line, the connection's last)
                chunk = chunk[1:]
                self._unacked += 1
            self._chunk_start = False
        self._buffer += chunk
        if self._pace:
            self._unacked += len(chunk)
            if self._unacked == self._pace:
                self._writer.write(b"A")
                self._unacked = 0
                self._chunk_start = True

    def buffered_line(self) -> bytes | None:
        """The next line if it is already here, without waiting (most event headers are: an
        event's reading then costs no task for a timeout, ``events``)."""
        end = self._buffer.find(b"\n", 0, MAX_LINE + 1)
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise AgentProtocolError("the agent sent an overlong line")
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def readexactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        with memoryview(self._buffer) as view:
            data = bytes(view[:size])  # one copy, not two (a bytearray slice, then bytes)
        del self._buffer[:size]
        return data

    async def answer(self) -> bytes:
        """The first reply line: ``R ...`` gives what follows R; ``E ...`` raises the failure's
        type (``agent_errors``)."""
        line = await asyncio.wait_for(self.readline(), REPLY_TIMEOUT_S)
        if line == b"R" or line.startswith(b"R "):
            return line[2:]
        if line.startswith(b"E "):
            raise agent_errors.parse(line[2:])
        raise AgentProtocolError(f"unexpected reply {line[:80]!r}")


async def start(link: AgentLink, request: StartRequest, *, follow: bool = False) -> int:
    """Start the process; with ``follow`` its events come next on ``link`` (read them with
    ``events``), as after ``open_events(pid, 0)``, without a second connection."""
    if len(request.meta) > MAX_META_BYTES or b"\0" in request.meta:
        raise ValueError("process description too long")
    fields = [
        b"start",
        _text(request.cwd),
        str(request.ring_bytes).encode(),
        str((1 if request.stdin else 0) | (2 if request.hold else 0) | (4 if follow else 0)).encode(),
        str(request.timeout_s).encode(),
        request.meta,
        str(len(request.argv)).encode(),
        *(_text(a) for a in request.argv),
        *(_text(f"{k}={v}") for k, v in request.env.items()),
    ]
    await link.send(fields)
    answer = await link.answer()
    if not answer.isdigit() or int(answer) <= 0:
        raise AgentProtocolError(f"bad pid {answer[:20]!r}")
    if follow:
        await link.answer()
    return int(answer)


async def list_processes(link: AgentLink) -> list[ProcessInfo]:
    await link.send([b"list"])
    found: list[ProcessInfo] = []
    while True:
        line = await asyncio.wait_for(link.readline(), REPLY_TIMEOUT_S)
        if line == b".":
            return found
        parts = line.split()
        if len(parts) != 7 or parts[0] != b"P" or len(found) >= MAX_PROCESSES:
            raise AgentProtocolError(f"bad process line {line[:80]!r}")
        try:
            pid, running, code, started, ended, meta_len = (int(p) for p in parts[1:])
        except ValueError:
            raise AgentProtocolError(f"bad process line {line[:80]!r}") from None
        if not 0 <= meta_len <= MAX_META_BYTES:
            raise AgentProtocolError("bad description length")
        meta = await asyncio.wait_for(link.readexactly(meta_len), REPLY_TIMEOUT_S)
        found.append(
            ProcessInfo(
                pid=pid,
                running=running == 1,
                exit_code=None if running == 1 else code,
                started_ms=started,
                ended_ms=None if running == 1 else ended,
                meta=meta,
            )
        )


async def open_events(link: AgentLink, pid: int, since: int, *, follow: bool = True) -> None:
    """Ask for ``pid``'s events after ``since`` (live until it ends, or without ``follow`` only
    what is kept now); raises ``ProcessNotFound`` before any is read."""
    await link.send([b"events", str(pid).encode(), str(since).encode(), b"1" if follow else b"0"])
    await link.answer()


async def events(link: AgentLink, *, keepalive_s: float | None = None) -> AsyncIterator[Event]:
    """The events after ``open_events``, as the agent sends them, until ``exit`` (or the link
    ends: the sandbox was paused or deleted, and the caller reconnects ``since`` the last seq).
    With ``keepalive_s``, a ``keepalive`` event after that long without one (a cancelled wait
    loses nothing: the link's buffer changes only once a read has returned)."""
    while True:
        try:
            line = link.buffered_line()
            if line is None:
                line = await asyncio.wait_for(link.readline(), keepalive_s)
        except TimeoutError:
            yield Event(type="keepalive")
            continue
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        if line == b"T":
            yield Event(type="truncated")
            continue
        parts = line.split()
        try:
            if len(parts) == 4 and parts[0] == b"V" and parts[2] in (b"o", b"e"):
                seq, size = int(parts[1]), int(parts[3])
                if not 0 <= size <= MAX_EVENT_BYTES:
                    raise ValueError
                data = await link.readexactly(size)
                yield Event(type="stdout" if parts[2] == b"o" else "stderr", seq=seq, data=data)
                continue
            if len(parts) == 3 and parts[0] == b"X":
                yield Event(type="exit", seq=int(parts[1]), exit_code=int(parts[2]))
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except ValueError:
            pass
        raise AgentProtocolError(f"bad event line {line[:80]!r}")


async def send_stdin(link: AgentLink, pid: int, data: bytes, *, eof: bool) -> None:
    await link.send([b"stdin", str(pid).encode(), b"1" if eof else b"0"], data)
    await link.answer()


async def send_signal(link: AgentLink, pid: int, signo: int) -> None:
    await link.send([b"signal", str(pid).encode(), str(signo).encode()])
    await link.answer()
