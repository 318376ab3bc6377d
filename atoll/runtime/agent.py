"""The host side of Atoll's agent (``agent.c``, PID 1 of every sandbox).

A command runs by connecting to the agent and sending one request; the agent starts it inside
the sandbox, where it inherits the namespaces, cgroup, capabilities and seccomp filter the agent
already holds. That skips the runtime process per call (``runc exec`` re-creates all of those
each time), which is most of an exec's cost. ``converse`` speaks the protocol on a connected
socket; how the socket is reached depends on the backend (OCI: ``run`` below; gVisor: through
runsc's port forwarding, ``gvisor_exec``).

In an OCI sandbox the socket is a file on the sandbox's private tmpfs, reached through
``/proc/<init>/root`` with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)``: a sandbox that
replaces it with a link cannot point Atoll at any other socket, and whatever answers is parsed as
untrusted input. When there is no socket (a sandbox started before the agent existed), ``run``
returns ``None`` and the caller falls back to the runtime's own exec. A command the agent cannot
start is answered with an errno (``agent_errors``): e.g. no thread or process (a fork bomb has
used up the process limit) raises ``ProcessLimitReached``, which the server answers with 503 and
Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from atoll.runtime import agent_errors, confined, oci_config
from atoll.runtime.spec import ExecRequest, ExecResult

# paced output (gVisor, ``pace``): agent.c starts each chunk with the mark and, while it awaits
# the chunk's "A", sends fillers now and then (runsc's port forwarding can hold a chunk's last
# bytes until more come: a filler is more)
CHUNK_MARK = b"+"
FILLER = b"."

log = logging.getLogger("atoll.agent")
SOURCE = Path(__file__).with_name("agent.c")
AGENT_PATH = f"{oci_config.HELPER_DIR}/agent"
SOCKET_IN_SANDBOX = f"{oci_config.HELPER_DIR}/run/agent.sock"
# after a timeout kill, how long the agent gets to hand over partial output (killing a fork
# bomb takes a while under gVisor on a loaded host)
KILL_GRACE_S = 10.0
START_TIMEOUT_S = 30.0
# an exec request is small; a reply line never legitimately exceeds this
MAX_LINE = 4096


def build(dest: Path) -> None:
    """Compile ``agent.c`` statically to ``dest`` unless the binary there is from this source."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    stamp = dest.with_name(dest.name + ".sha256")
    if dest.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        subprocess.run(
            ["cc", "-static", "-Os", "-s", "-o", str(tmp), str(SOURCE)],
            check=True,
            capture_output=True,
        )
    except FileNotFoundError:
        raise RuntimeError("cc is missing: install the Debian packages gcc and libc6-dev") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"building {SOURCE.name} failed: {exc.stderr.decode()[-2000:]}") from None
    tmp.chmod(0o755)
    tmp.rename(dest)
    stamp.write_text(digest + "\n")


def init_args(main_command: Sequence[str] | None, *, tcp_port: int | None = None) -> list[str]:
    """PID 1's argv: the agent alone, or the agent supervising the template's main process;
    listening on the sandbox's loopback at ``tcp_port`` instead of its socket file."""
    argv = [AGENT_PATH] if tcp_port is None else [AGENT_PATH, "--tcp", str(tcp_port)]
    return [*argv, "--", *main_command] if main_command else argv


def encode(request: ExecRequest) -> bytes:
    fields = [request.cwd, str(request.max_output_bytes), str(len(request.argv)), *request.argv]
    fields += [f"{key}={value}" for key, value in request.env.items()]
    payload = b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    return b"ATL1" + struct.pack("<I", len(payload)) + payload


def _connect_fd(init_pid: int) -> socket.socket | None:
    """A socket connected to the agent of the sandbox whose PID 1 is ``init_pid``, or None."""
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        target = confined.open_beneath(
            root,
            SOCKET_IN_SANDBOX.lstrip("/"),
            os.O_PATH,
            resolve=confined.RESOLVE_IN_ROOT | confined.RESOLVE_NO_SYMLINKS,
        )
    except OSError:
        os.close(root)
        return None
    os.close(root)
    try:
        if not stat.S_ISSOCK(os.fstat(target).st_mode):
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # connecting through the O_PATH descriptor's magic link reaches exactly that inode
            sock.connect(f"/proc/self/fd/{target}")
        except OSError:
            sock.close()
            return None
        return sock
    finally:
        os.close(target)


async def run(init_pid: int, request: ExecRequest) -> ExecResult | None:
    """Run ``request`` through the agent; None when the agent did not take it (nothing ran)."""
    sock = _connect_fd(init_pid)
    if sock is None:
        log.info("no agent socket in the sandbox of pid %d", init_pid)
        return None
    return await converse(sock, request, f"pid {init_pid}")


async def converse(
    sock: socket.socket, request: ExecRequest, who: str, *, pace: int = 0
) -> ExecResult | None:
    """Run ``request`` through the agent at the other end of ``sock`` (which this closes); None
    when the agent did not take it (nothing ran). ``pace``: the agent sends its output in chunks
    of that many bytes, each to be acknowledged (``agent.c``, gVisor sandboxes)."""
    sock.setblocking(False)
    unsent = send_early(sock, encode(request))
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
    try:
        if unsent:
            writer.write(unsent)
        try:
            started = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
        except (TimeoutError, ValueError, ConnectionError) as exc:
            log.info("agent of %s did not take a command: %r", who, exc)
            return None
        if started.startswith(b"E "):
            raise agent_errors.parse(started[2:])
        if not started.startswith(b"R "):
            log.info("agent of %s did not take a command: %r", who, started[:100])
            return None  # the agent could not fork (process limit) or is not ours to trust
        timed_out = False
        try:
            done = await asyncio.wait_for(reader.readline(), request.timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ConnectionError):
                writer.write(b"K")
                await writer.drain()
            try:
                done = await asyncio.wait_for(reader.readline(), KILL_GRACE_S)
            except (TimeoutError, ValueError, ConnectionError):
                done = b""
        except (ValueError, ConnectionError):
            done = b""
        code, out, err = await _result(
            reader, done, request.max_output_bytes, pace=pace, ack=lambda: writer.write(b"A")
        )
    finally:
        writer.close()
    if timed_out:
        err += f"\nprocess timed out after {request.timeout:g}s and was killed\n".encode()
        return ExecResult(exit_code=124, stdout=out, stderr=err, timed_out=True)
    return ExecResult(exit_code=code, stdout=out, stderr=err)


def send_early(sock: socket.socket, data: bytes) -> bytes:
    """Send what the socket takes now, before the stream exists; returns the rest. An agent with
    no room for a handler (the process limit used up) answers ``E`` and closes at once: a send
    into the closed connection would make the stream drop that answer unread (a write error
    closes it), so a failed send here just leaves the answer to be read."""
    try:
        return data[sock.send(data) :]
    except BlockingIOError:
        return data
    except OSError:  # EPIPE, ECONNRESET: the agent has answered and closed
        return b""


async def _result(
    reader: asyncio.StreamReader,
    line: bytes,
    cap: int,
    *,
    pace: int = 0,
    ack: Callable[[], None] = lambda: None,
) -> tuple[int, bytes, bytes]:
    """Parse ``X status outlen errlen`` and read the output (never more than ``cap`` each); with
    ``pace``, in chunks of that size, calling ``ack`` after each."""
    parts = line.split()
    marked = parts[4:] == [CHUNK_MARK]  # (an agent started by an older Atoll sends no marks)
    if len(parts) != 4 + marked or parts[0] != b"X":
        return 137, b"", b""  # the agent died (the sandbox's OOM killer, its deletion)
    try:
        code, out_len, err_len = (int(p) for p in parts[1:4])
    except ValueError:
        return 137, b"", b""
    if not (0 <= out_len <= cap and 0 <= err_len <= cap and 0 <= code <= 255):
        return 137, b"", b""
    try:
        out = await _read_output(reader, out_len, pace, ack, marked=marked)
        err = await _read_output(reader, err_len, pace, ack, marked=marked)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return code, b"", b""
    return code, out, err


async def _read_output(
    reader: asyncio.StreamReader, size: int, pace: int, ack: Callable[[], None], *, marked: bool
) -> bytes:
    chunks = []
    while size > 0:
        if pace and marked:
            await _chunk_mark(reader)
        chunk = await asyncio.wait_for(reader.readexactly(min(pace or size, size)), KILL_GRACE_S + 30)
        if pace:
            ack()
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


async def _chunk_mark(reader: asyncio.StreamReader) -> None:
    """Skip the fillers the agent sent while it awaited the last chunk's ``A`` (``agent.c``
    ``await_ack``: runsc's port forwarding can hold a chunk's last bytes until more come), up to
    the next chunk's ``+``; a bounded number, so this ends."""
    while True:
        mark = await asyncio.wait_for(reader.readexactly(1), KILL_GRACE_S + 30)
        if mark == CHUNK_MARK:
            return
        if mark != FILLER:
            raise ConnectionError(f"the agent sent {mark!r} where a chunk of output starts")
