"""The SSH gateway of an API replica (docs/cluster.md, "SSH through a replica").

A replica runs no sandbox, so its gateway relays: it checks the client's access id and password
against the shared database as every gateway does (same bounds: connections per source and in
all, failed logins, login and idle deadlines, sessions per connection), finds the sandbox's node
(``nodes.ssh_address``), and logs into that node's gateway with the client's own user name and
password before it accepts the client's login. The node's host key is pinned: the replica trusts
only the key the node recorded in the database (``nodes.ssh_host_key``). Each channel the client
opens is then opened the same on the node (atoll.ssh.relay_session): sessions (shell on a
terminal, command, SFTP) and ``ssh -L`` connections. When the node closes the connection (the
sandbox was deleted, the node stopped), the replica closes the client's.

The hop is SSH, so it is encrypted, unlike the HTTP hop between routers; the node authenticates
it exactly as it would the client (the access's password), so a replica holds no extra power
over a node's gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncssh

from atoll.cluster.registry import NodeRegistry
from atoll.ssh.bounds import ActiveForwarder
from atoll.ssh.gateway import KEEPALIVE_S, MAX_SESSIONS_PER_CONNECTION, Gateway, _Connection
from atoll.ssh.relay_session import RelaySession, split_address
from atoll.store.models import SshAccessRow

log = logging.getLogger("atoll.ssh")

NODE_LOGIN_TIMEOUT_S = 30.0  # the node's gateway resumes nothing at login: seconds are plenty


class RelayRefused(Exception):
    """The sandbox's node cannot take the session (the message says why, to the client)."""


class RelayGateway(Gateway):
    def __init__(self, *, registry: NodeRegistry, **options: Any) -> None:
        super().__init__(**options)
        self.registry = registry

    async def start(self) -> None:
        # no process or SFTP factory: every session is the connection's (session_requested)
        # (and no line editor: the node's terminal echoes and edits, the replica passes bytes)
        await self.listen(lambda: _RelayConnection(self), line_editor=False)

    async def dial(
        self, access: SshAccessRow, username: str, password: str
    ) -> asyncssh.SSHClientConnection | None:
        """A connection logged into the gateway of the node that runs the access's sandbox; None
        when the node refuses the password (an access regenerated meanwhile)."""
        home = await self.registry.home_of(access.sandbox_id)
        if home is None:
            raise RelayRefused("the sandbox runs on no node of the cluster")
        if not home.up:
            raise RelayRefused(f"the sandbox's node {home.node_id} is down")
        if not home.ssh_address or not home.ssh_host_key:
            raise RelayRefused(f"the sandbox's node {home.node_id} runs no SSH gateway (its --ssh-port is 0)")
        try:
            host, port = split_address(home.ssh_address)
            key = asyncssh.import_public_key(home.ssh_host_key)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise RelayRefused(f"the node {home.node_id} recorded a bad SSH address or host key") from exc
        connecting = asyncssh.connect(
            host, port, username=username, password=password,
            known_hosts=([key], [], []), client_keys=None, agent_path=None, config=(),
            preferred_auth="password", login_timeout=NODE_LOGIN_TIMEOUT_S,
            keepalive_interval=KEEPALIVE_S, keepalive_count_max=3,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(connecting, NODE_LOGIN_TIMEOUT_S)
        except asyncssh.PermissionDenied:
            return None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            log.warning("ssh relay to node %s at %s failed: %s", home.node_id, home.ssh_address, exc)
            raise RelayRefused(f"the sandbox's node {home.node_id} cannot be reached over SSH") from None


class _RelayConnection(_Connection):
    gateway: RelayGateway

    def __init__(self, gateway: RelayGateway) -> None:
        super().__init__(gateway)
        self.upstream: asyncssh.SSHClientConnection | None = None
        self._watch: asyncio.Task[None] | None = None

    async def logged_in(self, row: SshAccessRow, username: str, password: str) -> bool:
        try:
            upstream = await self.gateway.dial(row, username, password)
        except RelayRefused as exc:
            # not the client's fault: not counted as a failed login; said in the banner, which
            # OpenSSH prints before "Permission denied"
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.send_auth_banner(f"atoll: {exc}\r\n")
            return False
        if upstream is None:
            self.gateway.limiter.failed(self.source)
            return False
        if self.conn is None:  # the client went away while the node was logged into
            upstream.close()
            return False
        self.upstream = upstream
        self._watch = asyncio.create_task(self._follow(upstream))
        return True

    async def _follow(self, upstream: asyncssh.SSHClientConnection) -> None:
        """The node closed its side (the sandbox was deleted, the node stopped): so does this."""
        await upstream.wait_closed()
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "the sandbox's node closed the connection")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._watch is not None:
            self._watch.cancel()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def session_requested(self) -> Any:
        if self.upstream is None or self.sessions >= MAX_SESSIONS_PER_CONNECTION:
            return False
        return RelaySession(self, self.upstream)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        if self.upstream is None or self.conn is None or not 0 < dest_port < 65536:
            return False
        return self._tunnel(self.upstream, dest_host, dest_port)

    async def _tunnel(self, upstream: asyncssh.SSHClientConnection, dest_host: str, dest_port: int) -> Any:
        """``ssh -L``: the same connection opened on the node (its gateway goes to the sandbox,
        whatever host is named); a refusal there is the client's refusal."""
        self.touch()
        _, peer = await upstream.create_connection(
            lambda: ActiveForwarder(self.touch),  # type: ignore[arg-type,return-value]
            dest_host,
            dest_port,
        )
        assert isinstance(peer, ActiveForwarder)
        return ActiveForwarder(self.touch, peer)
