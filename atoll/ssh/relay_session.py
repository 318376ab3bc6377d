"""One SSH session relayed from an API replica's gateway to the node's (atoll.ssh.relay): the
client's requests (terminal type, size and modes, environment, the command or the subsystem,
then window changes, signals, breaks, end of input) are made the same on the node's channel, and
the node's output, end of output, exit status or exit signal come back the same way.

Nothing is buffered without bound: when one side's send window is full (asyncssh calls
``pause_writing``), reading from the other side stops until it drains (``resume_writing``), so
the SSH flow-control windows of both connections hold the bytes in flight. Until the node's
channel is open the client's channel is not read (after its first packet, kept)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import asyncssh

log = logging.getLogger("atoll.ssh")

SUBSYSTEMS = frozenset({"sftp"})  # what the node's gateway serves (no scp, no others)


class Owner(Protocol):
    """The client's connection on the replica, as a session needs it."""

    sessions: int

    def touch(self) -> None: ...


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as the nodes record their gateway (``ValueError`` else)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {address!r}")
    if host.startswith("[") and host.endswith("]"):  # IPv6, as cluster_role writes it
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"not host:port: {address!r}")
    if not host:
        raise ValueError(f"not host:port: {address!r}")
    return host, port


class RelaySession(asyncssh.SSHServerSession[bytes]):
    """The client's side of a relayed session."""

    def __init__(self, owner: Owner, upstream: asyncssh.SSHClientConnection) -> None:
        self.owner = owner
        self.upstream = upstream
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.node_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.term_type: str | None = None
        self.term_size: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.term_modes: dict[int, int] = {}
        self.command: str | None = None
        self.subsystem: str | None = None
        # what the client sent before the node's channel opened: one packet at most, for the
        # client's channel is paused at the first (asyncssh then holds the rest, in its window)
        self.early: list[bytes] = []
        self.eof_pending = False  # the client ended its input before the node's channel opened
        self.closed = False
        self._opening: asyncio.Task[None] | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan  # an SSHServerChannel
        self.owner.sessions += 1

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self.term_type, self.term_size, self.term_modes = term_type, term_size, dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem not in SUBSYSTEMS:
            return False
        self.subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._opening = asyncio.create_task(self._open())

    async def _open(self) -> None:
        assert self.chan is not None
        env: dict[bytes | str, bytes | str] = dict(self.chan.get_environment_bytes().items())
        try:
            node_chan, _ = await self.upstream.create_session(
                lambda: _NodeSide(self), command=self.command, subsystem=self.subsystem, env=env,
                term_type=self.term_type, term_size=self.term_size if self.term_type else None,
                term_modes=self.term_modes if self.term_type else None, encoding=None,
            )  # fmt: skip
        except (asyncssh.Error, OSError) as exc:
            log.info("ssh relay: the node refused a session: %s", exc)
            with contextlib.suppress(Exception):
                self.chan.write_stderr(f"atoll: the sandbox's node refused the session: {exc}\r\n".encode())
                self.chan.exit(255)
            return
        if self.closed:  # the client went away meanwhile
            node_chan.close()
            return
        self.node_chan = node_chan
        for data in self.early:
            node_chan.write(data)
        self.early.clear()
        if self.eof_pending:
            node_chan.write_eof()
        self.chan.resume_reading()

    # the client -> the node

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.owner.touch()
        if self.node_chan is not None:
            self.node_chan.write(data)
        elif self.chan is not None:  # asyncssh resumes reading right after session_started
            self.early.append(data)
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        if self.node_chan is not None:
            self.node_chan.write_eof()
        else:
            self.eof_pending = True
        return True  # half open: the node's output still comes

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.term_size = (width, height, pixwidth, pixheight)
        if self.node_chan is not None:
            self.node_chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self.node_chan is not None:
            self.node_chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.node_chan is not None:
            self.node_chan.send_break(msec)
        return True

    def pause_writing(self) -> None:  # the client is slow to take the node's output
        if self.node_chan is not None:
            self.node_chan.pause_reading()

    def resume_writing(self) -> None:
        if self.node_chan is not None:
            self.node_chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.sessions -= 1
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self.node_chan is not None:
            self.node_chan.close()


class _NodeSide(asyncssh.SSHClientSession[bytes]):
    """The node's side of a relayed session: its output and ending, to the client."""

    def __init__(self, relay: RelaySession) -> None:
        self.relay = relay
        self.status: int | None = None
        self.signal: tuple[str, bool, str, str] | None = None

    @property
    def _client(self) -> asyncssh.SSHServerChannel[bytes] | None:
        return None if self.relay.closed else self.relay.chan

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.relay.owner.touch()
        client = self._client
        if client is None:
            return
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            client.write_stderr(data)
        else:
            client.write(data)

    def eof_received(self) -> bool:
        client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.write_eof()
        return True  # the exit status follows

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:  # the node is slow to take the client's input
        client = self._client
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self._client
        if client is not None:
            client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        client = self._client
        if client is None:
            return
        with contextlib.suppress(OSError):
            if self.signal is not None:
                client.exit_with_signal(*self.signal)
            elif self.status is not None:
                client.exit(self.status)
            else:
                client.close()
