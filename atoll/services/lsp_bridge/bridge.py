"""The in-sandbox half of Atoll's language servers (``atoll.server.lsp`` is the host half).

Runs one language server and joins its stdio to one TCP connection from the host: listens on
the sandbox's own address on a free port, prints the port, and detaches (the agent's ``exec``
returns with the port while this keeps running in its own session). The first connection that
sends the per-server token (``ATOLL_LSP_TOKEN``) as its first line is the host; any other is
dropped. Then the server starts and bytes flow both ways, unparsed. When either side ends (the
host closes, or the server exits or crashes) the server's whole process group is killed and
this exits: nothing outlives the host's connection, and a crash reaches the host as EOF.

Standard library only, Python 3.7+: it runs on whatever python3 the sandbox has. Sent in the
environment and run with ``python3 -c`` (no file to write into the sandbox)."""

from __future__ import annotations

import hmac
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import IO

ACCEPT_TIMEOUT_S = 30.0  # the host connects at once; a bridge nobody claims goes away
TOKEN_TIMEOUT_S = 10.0
CHUNK = 65536
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """The server gets SIGKILL if the bridge dies first (so a killed bridge leaks nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def _read_line(conn: socket.socket, limit: int) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) <= limit:
        got = conn.recv(1)
        if not got:
            break
        data += got
    return data.strip()


def _claim(listener: socket.socket, token: bytes) -> socket.socket | None:
    """The host's connection: the first one to present the token before the deadline."""
    deadline = time.monotonic() + ACCEPT_TIMEOUT_S
    while time.monotonic() < deadline:
        listener.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            conn, _ = listener.accept()
        except OSError:
            return None
        conn.settimeout(TOKEN_TIMEOUT_S)
        try:
            offered = _read_line(conn, len(token) + 2)
        except OSError:
            offered = b""
        if hmac.compare_digest(offered, token):
            conn.settimeout(None)
            # a server writes header and body apart: Nagle would hold the body for an ACK
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn
        conn.close()
    return None


def _relay(conn: socket.socket, stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Bytes both ways until either side ends; one thread, blocking writes (the server reads
    its stdin promptly, and the host reads the connection promptly)."""
    to_server, from_server = stdin.fileno(), stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(conn, selectors.EVENT_READ)
        selector.register(from_server, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                try:
                    if key.fileobj is conn:
                        data = conn.recv(CHUNK)
                        if not data:
                            return
                        view = memoryview(data)
                        while view:
                            view = view[os.write(to_server, view) :]
                    else:
                        data = os.read(from_server, CHUNK)
                        if not data:
                            return
                        conn.sendall(data)
                except OSError:
                    return


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            pass
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
    # the leader is gone; members it left behind still carry its group id
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def serve(listener: socket.socket, token: bytes, argv: list[str], cwd: str) -> None:
    conn = _claim(listener, token)
    listener.close()
    if conn is None:
        return
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,  # its own group: one killpg reaches tsserver and the like too
        preexec_fn=_die_with_parent,
    )
    assert proc.stdin is not None and proc.stdout is not None
    _relay(conn, proc.stdin, proc.stdout)
    _kill_group(proc)
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: bridge ADDRESS CWD -- SERVER [ARG...]\n")
        return 2
    address, cwd, argv = args[0], args[1], args[3:]
    token = os.environ.pop("ATOLL_LSP_TOKEN", "").encode()
    os.environ.pop("ATOLL_LSP_BRIDGE", None)
    if not token:
        sys.stderr.write("ATOLL_LSP_TOKEN is not set\n")
        return 2
    if shutil.which(argv[0]) is None:
        sys.stderr.write(f"{argv[0]}: not found in the sandbox\n")
        return 127
    if not os.path.isdir(cwd):
        sys.stderr.write(f"{cwd}: no such directory\n")
        return 3
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 0))
    listener.listen(4)
    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    if os.fork() > 0:
        os._exit(0)  # the agent's command ends here, with the port as its output
    os.setsid()  # out of the command's session: the agent may kill that one
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        serve(listener, token, argv, cwd)
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
