"""The per-address connection cap is the operator's (``--max-connections-per-address``, issue 15):
with a low one, an address holding that many idle connections gets no more (closed at once, on
the API and on the router: they share the cap), other addresses are served, and the address is
let in again as soon as it closes one."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
CAP = 5
HOLDER = "127.0.0.1"
OTHER = "127.0.0.2"


def connect(address: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def refused(address: str, port: int) -> bool:
    """A connection from ``address`` is closed by the server without an answer."""
    with connect(address, port) as s:
        try:
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            return s.recv(100) == b""
        except ConnectionError:
            return True


def health(address: str, port: int) -> int:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(f"http://127.0.0.1:{port}/v1/health").status_code


@contextlib.contextmanager
def idle(address: str, port: int, count: int) -> Iterator[list[socket.socket]]:
    held = [connect(address, port) for _ in range(count)]
    try:
        time.sleep(0.3)  # accepted and counted
        yield held
    finally:
        for s in held:
            s.close()


def test_a_low_cap_is_enforced_per_address(spare: SpareServer) -> None:
    with spare("--no-build-template", "--max-connections-per-address", str(CAP)) as server:
        api_port, router_port = server.port, server.router_port
        assert health(HOLDER, api_port) == 200
        with idle(HOLDER, api_port, CAP - 1) as held:
            assert health(HOLDER, api_port) == 200  # the last one of its share
            with idle(HOLDER, router_port, 1):  # the router counts in the same share
                assert refused(HOLDER, api_port)
                assert refused(HOLDER, router_port)
                assert health(OTHER, api_port) == 200  # someone else is served
            assert health(HOLDER, api_port) == 200  # one closed: in again
            held.append(connect(HOLDER, api_port))
            time.sleep(0.3)
            assert refused(HOLDER, api_port)
        deadline = time.monotonic() + 5  # all closed: the share is back
        while health_or_zero(HOLDER, api_port) != 200:
            assert time.monotonic() < deadline, "the address was not let in again"
            time.sleep(0.1)


def health_or_zero(address: str, port: int) -> int:
    try:
        return health(address, port)
    except httpx.HTTPError:
        return 0
