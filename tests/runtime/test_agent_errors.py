"""The real agent (``agent.c``, built from source) answers each failure with an errno that the
host side turns into its type. The agent runs here as an ordinary process listening on the
loopback (``--tcp``, as in a gVisor sandbox), reached through a socketpair as gVisor's port
forwarding does; no sandbox is needed for what these failures are about."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from atoll._exceptions import (
    BadWorkingDirectory,
    ExecSetupFailed,
    ProcessNotFound,
    ProcessStateConflict,
)
from atoll.runtime import agent, agent_processes
from atoll.runtime.agent_processes import AgentLink, StartRequest
from atoll.runtime.spec import ExecRequest, ExecResult
from tests._support.server import free_port

PACE = 8192  # agent.c's pace with --tcp


@pytest.fixture(scope="module")
def agent_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = tmp_path_factory.mktemp("agent") / "agent"
    agent.build(binary)
    port = free_port()
    proc = subprocess.Popen([str(binary), "--tcp", str(port)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the agent did not listen"
            time.sleep(0.01)
        yield port
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def _bridge(port: int) -> socket.socket:
    """A unix stream socket leading to the agent's TCP port (the host side speaks over unix
    sockets, as through gVisor's port forwarding)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tcp = socket.create_connection(("127.0.0.1", port))

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def run() -> None:
        back = threading.Thread(target=pump, args=(tcp, theirs), daemon=True)
        back.start()
        pump(theirs, tcp)
        back.join(timeout=30)
        tcp.close()
        theirs.close()

    threading.Thread(target=run, daemon=True).start()
    return ours


def _exec(port: int, cwd: str, *argv: str) -> ExecResult | None:
    request = ExecRequest(argv=argv or ("/bin/true",), env={}, cwd=cwd, timeout=10)
    return asyncio.run(agent.converse(_bridge(port), request, "test agent", pace=PACE))


def test_a_missing_cwd_is_enoent_and_a_file_as_cwd_enotdir(agent_port: int, tmp_path: Path) -> None:
    with pytest.raises(BadWorkingDirectory) as missing:
        _exec(agent_port, str(tmp_path / "no-such-dir"))
    assert missing.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("")
    with pytest.raises(BadWorkingDirectory) as not_dir:
        _exec(agent_port, str(tmp_path / "file"))
    assert not_dir.value.errno == errno.ENOTDIR


async def _with_link(port: int, work: Callable[[AgentLink], Awaitable[None]]) -> None:
    link = AgentLink(_bridge(port), pace=PACE)
    try:
        await work(link)
    finally:
        link.close()


def test_background_process_failures_are_typed(agent_port: int, tmp_path: Path) -> None:
    async def start_in_missing_dir(link: AgentLink) -> None:
        request = StartRequest(argv=("/bin/true",), env={}, cwd=str(tmp_path / "gone"))
        await agent_processes.start(link, request)

    with pytest.raises(BadWorkingDirectory) as bad_cwd:
        asyncio.run(_with_link(agent_port, start_in_missing_dir))
    assert bad_cwd.value.errno == errno.ENOENT

    async def start_missing_program(link: AgentLink) -> None:
        request = StartRequest(argv=("/no/such/program",), env={}, cwd=str(tmp_path))
        await agent_processes.start(link, request)

    with pytest.raises(ExecSetupFailed) as no_program:
        asyncio.run(_with_link(agent_port, start_missing_program))
    assert type(no_program.value) is ExecSetupFailed and no_program.value.errno == errno.ENOENT

    async def signal_unknown(link: AgentLink) -> None:
        await agent_processes.send_signal(link, 999_999, signal.SIGTERM)

    with pytest.raises(ProcessNotFound) as unknown:
        asyncio.run(_with_link(agent_port, signal_unknown))
    assert unknown.value.errno == errno.ESRCH

    pids: list[int] = []

    async def start_sleeper(link: AgentLink) -> None:
        request = StartRequest(argv=("/bin/sleep", "30"), env={}, cwd=str(tmp_path))
        pids.append(await agent_processes.start(link, request))

    asyncio.run(_with_link(agent_port, start_sleeper))

    async def stdin_without_stdin(link: AgentLink) -> None:
        await agent_processes.send_stdin(link, pids[0], b"x", eof=False)

    with pytest.raises(ProcessStateConflict) as no_stdin:
        asyncio.run(_with_link(agent_port, stdin_without_stdin))
    assert no_stdin.value.errno == errno.EBADF
    assert no_stdin.value.message == "the process was started without stdin"

    async def kill(link: AgentLink) -> None:
        await agent_processes.send_signal(link, pids[0], signal.SIGKILL)

    asyncio.run(_with_link(agent_port, kill))
    deadline = time.monotonic() + 10
    while True:  # the agent records the exit when its pump sees it
        try:
            asyncio.run(_with_link(agent_port, kill))
        except ProcessStateConflict as ended:
            assert ended.errno == errno.ECHILD and ended.message == "the process has ended"
            break
        assert time.monotonic() < deadline, "the killed process never ended"
        time.sleep(0.05)
