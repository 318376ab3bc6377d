"""The SSH gateway (agent-services §4): an asyncssh server on the host (``--ssh-port``, default
2222, 0 disables) that a real OpenSSH client logs into with an access's id as user name and its
password. A session runs inside the access's sandbox, which is resumed first if paused:

- a shell on a terminal (``ssh ID@HOST``): Atoll's PTY machinery (``atoll.server.pty``), resized
  with the client's window;
- a command (``ssh ID@HOST CMD``, or a shell without a terminal): a live process with a stdin pipe
  (``atoll.server.processes``), its exit status returned;
- local forwarding (``ssh -L``): to the sandbox's own address, whatever host the client names.

Bounded (``atoll.ssh.bounds``): connections per source address and in all, sessions per
connection, a login deadline, an idle deadline, failed logins per source (refused outright for a
while after too many), keepalives that drop dead peers. Deleting a sandbox deletes its accesses
and closes their connections. The host key is generated once, kept in the data directory
(0600)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from atoll._exceptions import AtollError
from atoll._states import State
from atoll.server.manager import SandboxManager
from atoll.server.processes import ProcessService
from atoll.server.pty import PtyManager, PtySession
from atoll.ssh.access import AccessStore, matches
from atoll.ssh.bounds import ConnectionCounts, FailureLimiter, GatewayLimits, IdleTimer, forward_tcp
from atoll.ssh.sftp import SandboxSFTP
from atoll.store.models import SshAccessRow

if TYPE_CHECKING:
    from atoll.cluster.registry import NodeRegistry

log = logging.getLogger("atoll.ssh")

MAX_SESSIONS_PER_CONNECTION = 10
FAILURE_DELAY_S = 0.5  # every refused password costs the guesser this long
KEEPALIVE_S = 30
READ_CHUNK_BYTES = 64 * 1024
HOST_KEY_NAME = "ssh_host_ed25519_key"


def host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The gateway's key: made on first start, then the same one (clients pin it)."""
    path = data_dir / HOST_KEY_NAME
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        path.touch(mode=0o600)
        path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    return asyncssh.read_private_key(str(path))


def public_host_key(settings: Any) -> str | None:
    """The gateway's public key (OpenSSH format) a node records for the API replicas' gateways,
    which pin it (atoll.ssh.relay); None when no gateway runs (``ssh_port`` 0)."""
    if not settings.ssh_port:
        return None
    return host_key(settings.data_dir).export_public_key().decode().strip()


class Gateway:
    def __init__(
        self,
        *,
        manager: SandboxManager,
        store: AccessStore,
        ptys: PtyManager,
        processes: ProcessService,
        data_dir: Path,
        host: str,
        port: int,
        limits: GatewayLimits | None = None,
    ) -> None:
        self.manager = manager
        self.store = store
        self.ptys = ptys
        self.processes = processes
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.limits = limits or GatewayLimits()
        self.limiter = FailureLimiter()
        self.connections = ConnectionCounts(self.limits)
        self.live: set[_Connection] = set()  # admitted and not yet lost
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        await self.listen(
            lambda: _Connection(self),
            process_factory=self._session,
            sftp_factory=lambda chan: SandboxSFTP(chan, self),
            line_editor=False,
            allow_scp=False,
        )

    async def listen(self, connection: Callable[[], asyncssh.SSHServer], **factories: Any) -> None:
        """The listener with the gateway's bounds; ``factories`` say how sessions are served."""
        key = host_key(self.data_dir)
        self._server = await asyncssh.create_server(
            connection,
            self.host or None,
            self.port,
            server_host_keys=[key],
            encoding=None,
            **factories,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=self.limits.login_timeout_s,
            keepalive_interval=KEEPALIVE_S,
            keepalive_count_max=3,
        )
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def forget_sandbox(self, sandbox_id: str) -> None:
        """A teardown hook: when the sandbox is being deleted (not paused or stopped), its
        accesses go, and so do connections logged in with them."""
        if not await forget_accesses(self.manager, self.store, sandbox_id):
            return
        for state in list(self.live):
            if state.access is not None and state.access.sandbox_id == sandbox_id and state.conn is not None:
                state.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the sandbox was deleted")

    async def running(self, access: SshAccessRow) -> Any:
        """The access's sandbox, resumed if it was paused."""
        return await self.manager.ensure_running(await self.manager.get(access.org_id, access.sandbox_id))

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        state = _owner(process)
        access = state.access
        try:
            if access is None or state.sessions >= MAX_SESSIONS_PER_CONNECTION:
                process.stderr.write(b"too many sessions on this connection\r\n")
                process.exit(1)
                return
            state.sessions += 1
            state.touch()
            try:
                row = await self.running(access)
                if process.get_terminal_type() is not None and process.command is None:
                    await self._shell(process, access, row.id)
                else:
                    await self._command(process, access, row.id, process.command or "exec /bin/sh")
            finally:
                state.sessions -= 1
        except (AtollError, OSError) as exc:
            with contextlib.suppress(Exception):
                process.stderr.write(f"atoll: {exc}\r\n".encode())
                process.exit(255)

    async def _shell(
        self, process: asyncssh.SSHServerProcess[bytes], access: SshAccessRow, sandbox_id: str
    ) -> None:
        cols, rows, _, _ = process.get_terminal_size()
        session = await self.ptys.create(
            access.org_id, sandbox_id, session_id=None, cols=cols or 80, rows=rows or 24,
            cwd=None, envs={"TERM": process.get_terminal_type() or "xterm"}, lazy_start=False,
        )  # fmt: skip
        sink = _ChannelSink(process, _owner(process))
        await self.ptys.attach(session, sink)
        try:
            await self._feed_terminal(process, session, access, sandbox_id, sink)
        finally:
            self.ptys.detach(session, sink)
            with contextlib.suppress(AtollError):
                await self.ptys.delete(access.org_id, sandbox_id, session.id)
        if not sink.closed:
            process.exit(0)

    async def _feed_terminal(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        session: PtySession,
        access: SshAccessRow,
        sandbox_id: str,
        sink: _ChannelSink,
    ) -> None:
        while not sink.closed:
            try:
                data = await process.stdin.read(READ_CHUNK_BYTES)
            except asyncssh.TerminalSizeChanged as change:
                cols, rows = change.width, change.height
                await self.ptys.resize(access.org_id, sandbox_id, session.id, cols=cols, rows=rows)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            if not data:
                return
            sink.touch()
            await self.ptys.write(session, data)

    async def _command(
        self, process: asyncssh.SSHServerProcess[bytes], access: SshAccessRow, sandbox_id: str, command: str
    ) -> None:
        started = await self.processes.start(
            access.org_id, sandbox_id, command=command, cwd=None, envs={}, timeout_s=0,
            stdin=True, tag="ssh", foreground=True,
        )  # fmt: skip
        pid = int(started["pid"])
        body = await self.processes.open_events(access.org_id, sandbox_id, pid, 0, binary=True)
        owner = _owner(process)
        feeder = asyncio.create_task(self._feed_stdin(process, access, sandbox_id, pid))
        exit_code = 255
        ended = False
        try:
            async for frame in body:
                if not frame.startswith(b"data: "):
                    continue
                event = json.loads(frame[len(b"data: ") :])
                owner.touch()
                if event["type"] == "stdout":
                    process.stdout.write(base64.b64decode(event["data"]))
                    await process.stdout.drain()
                elif event["type"] == "stderr":
                    process.stderr.write(base64.b64decode(event["data"]))
                    await process.stderr.drain()
                elif event["type"] == "exit":
                    exit_code = int(event["exit_code"])
                    ended = True
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
            if not ended:  # the client went away first: the command goes too
                with contextlib.suppress(Exception):
                    await self.processes.signal(access.org_id, sandbox_id, pid, "SIGKILL")
        process.exit(exit_code if 0 <= exit_code < 256 else 255)

    async def _feed_stdin(
        self, process: asyncssh.SSHServerProcess[bytes], access: SshAccessRow, sandbox_id: str, pid: int
    ) -> None:
        owner = _owner(process)
        with contextlib.suppress(AtollError, ConnectionError):
            while True:
                try:
                    data = await process.stdin.read(READ_CHUNK_BYTES)
                except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived, asyncssh.SignalReceived):
                    continue
                owner.touch()
                await self.processes.send_stdin(access.org_id, sandbox_id, pid, data, eof=not data)
                if not data:
                    return

    async def forward(self, access: SshAccessRow, owner: _Connection, port: int) -> Any:
        """``ssh -L``: a TCP connection to ``port`` at the sandbox's own address."""
        owner.touch()
        row = await self.running(access)
        slot = self.manager.slot_of(row)
        if slot is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "the sandbox has no network")
        return await forward_tcp(slot.sandbox_ip, port, owner.touch)


def _owner(process: asyncssh.SSHServerProcess[bytes]) -> _Connection:
    state = process.channel.get_connection().get_owner()
    assert isinstance(state, _Connection)
    return state


class _ChannelSink:
    """A terminal's output to an SSH channel (what ``PtyManager`` calls a socket)."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes], owner: _Connection) -> None:
        self.process = process
        self.touch = owner.touch
        self.closed = False

    async def send_bytes(self, data: bytes) -> None:
        self.touch()
        self.process.stdout.write(data)
        await self.process.stdout.drain()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.process.exit(0)


class _Connection(asyncssh.SSHServer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.source = ""
        self.access: SshAccessRow | None = None
        self.sessions = 0
        self.conn: asyncssh.SSHServerConnection | None = None
        self.idle: IdleTimer | None = None  # armed at login; asyncssh's login timeout before it

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        self.source = str(peer[0]) if peer else ""
        refusal = self.gateway.connections.admit(self.source)
        if refusal is not None:
            # closed before the version exchange: no key exchange, no crypto, the fd back at once
            log.debug("ssh connection from %s refused: %s", self.source, refusal)
            conn.abort()
            return
        self.conn = conn
        self.gateway.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.conn is not None:  # admitted
            self.conn = None
            self.gateway.live.discard(self)
            self.gateway.connections.release(self.source)

    def touch(self) -> None:
        if self.idle is not None:
            self.idle.touch()

    def _idle(self) -> None:
        if self.conn is not None:
            log.info("ssh connection from %s closed after %.0f s idle", self.source, self.idle_timeout_s)
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "idle timeout")

    @property
    def idle_timeout_s(self) -> float:
        return self.gateway.limits.idle_timeout_s

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        limiter = self.gateway.limiter
        if limiter.blocked(self.source):
            await asyncio.sleep(FAILURE_DELAY_S)
            return False
        row = await self.gateway.store.get(username) if len(username) <= 64 else None
        valid = row is not None and matches(row, password)
        if valid and row is not None:
            try:  # the sandbox must still be there (and still the access's org's)
                await self.gateway.manager.get(row.org_id, row.sandbox_id)
            except AtollError:
                valid = False
        if not valid or row is None:
            limiter.failed(self.source)
            log.info("ssh login refused for %r from %s", username[:64], self.source)
            await asyncio.sleep(FAILURE_DELAY_S)
            return False
        if not await self.logged_in(row, username, password):
            return False
        self.access = row
        if self.conn is not None and self.idle_timeout_s > 0:
            self.idle = IdleTimer(self.idle_timeout_s, self._idle)
        return True

    async def logged_in(self, row: SshAccessRow, username: str, password: str) -> bool:
        """The password is right: anything else to check before the login is accepted (an API
        replica logs into the sandbox's node here, atoll.ssh.relay)."""
        return True

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        if self.access is None or self.conn is None or not 0 < dest_port < 65536:
            return False
        return self.gateway.forward(self.access, self, dest_port)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # remote forwarding (-R) would listen on the host: not offered


async def forget_accesses(manager: SandboxManager, store: AccessStore, sandbox_id: str) -> bool:
    """Deletes the sandbox's accesses if it is being deleted (or never was recorded); a pause or
    a stop, which tear down too, keeps them. Says whether it did."""
    row = await manager.repo.get_sandbox(sandbox_id)
    if row is not None and row.state != State.DELETING:
        return False
    await store.delete_for_sandbox(sandbox_id)
    return True


async def start_gateway(
    *,
    manager: SandboxManager,
    ptys: PtyManager,
    processes: ProcessService,
    settings: Any,
    registry: NodeRegistry | None = None,
) -> Gateway | None:
    """The lifespan's part: the gateway listening (its ``store`` is the one the routes use), or
    None when ``ssh_port`` is 0. A port that cannot be bound is logged and leaves the API up
    without the gateway (the routes then answer 501). An API replica in a cluster (``registry``)
    runs no sandbox: its gateway relays every session to the sandbox's node (atoll.ssh.relay)."""
    store = AccessStore(manager.repo.sessions, ttl_s=settings.ssh_access_ttl_s)
    if not settings.ssh_port:  # accesses made while a gateway ran still go with their sandbox

        async def forget(sandbox_id: str) -> None:
            await forget_accesses(manager, store, sandbox_id)

        manager.host.teardown_hooks.append(forget)
        return None
    options: dict[str, Any] = dict(
        manager=manager, store=store, ptys=ptys, processes=processes,
        data_dir=settings.data_dir, host=settings.ssh_host, port=settings.ssh_port,
        limits=GatewayLimits.from_settings(settings),
    )  # fmt: skip
    if settings.role == "api" and registry is not None:
        from atoll.ssh.relay import RelayGateway  # it subclasses Gateway: imported where used

        gateway: Gateway = RelayGateway(registry=registry, **options)
    else:
        gateway = Gateway(**options)
    manager.host.teardown_hooks.append(gateway.forget_sandbox)
    try:
        await gateway.start()
    except OSError as exc:
        log.error("the SSH gateway could not listen on port %s: %s", settings.ssh_port, exc)
        return None
    return gateway
