"""HTTPS and plain HTTP on one port, in process (``_local``'s real router, fake look-up): the
first byte picks the protocol, silence and stalled handshakes are cut after their bounded waits,
bytes that only look like TLS do no harm, and stopping cuts connections still undecided."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from atoll.router import router_certificate, tls_context
from tests.router._local import DOMAIN, KEY, App, FakeLookup, RouterThread

AUTH = {"authorization": f"Bearer {KEY}"}
FIRST_BYTE_S = 0.5
HANDSHAKE_S = 0.5


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    started = App.start(tmp_path_factory.mktemp("app") / "a.log")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    made = router_certificate(tmp_path_factory.mktemp("data"), [DOMAIN], None, None)
    assert made.ca is not None
    return made.cert, made.key, made.ca


@pytest.fixture
def router(app: App, certificate: tuple[Path, Path, Path]) -> Iterator[RouterThread]:
    cert, key, _ = certificate
    thread = RouterThread(
        FakeLookup({"sbxa": app.port}),
        ssl_context=tls_context(cert, key),
        first_byte_timeout_s=FIRST_BYTE_S,
        handshake_timeout_s=HANDSHAKE_S,
    ).start()
    yield thread
    thread.stop()


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long until the router closed ``sock`` (fails if it does not within ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def test_one_port_both_protocols(router: RouterThread, certificate: tuple[Path, Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[2]))
    host = {"host": router.host("sbxa")}
    with httpx.Client(verify=trusting, trust_env=False, headers=AUTH, timeout=10) as client:
        for scheme in ("https", "http", "https"):
            r = client.get(
                f"{scheme}://127.0.0.1:{router.port}/echo",
                headers=host,
                extensions={"sni_hostname": f"sbxa.{DOMAIN}"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["headers"]["x-forwarded-proto"] == scheme


def test_silence_and_stalled_handshakes_are_cut(router: RouterThread) -> None:
    with socket.create_connection(("127.0.0.1", router.port)) as silent:
        assert FIRST_BYTE_S - 0.2 <= closed_within(silent, 5) <= FIRST_BYTE_S + 2
    with socket.create_connection(("127.0.0.1", router.port)) as stalled:
        stalled.sendall(b"\x16")  # a handshake record begins, and nothing more comes
        assert closed_within(stalled, 5) <= HANDSHAKE_S + 2
    with socket.create_connection(("127.0.0.1", router.port)) as garbage:
        garbage.sendall(b"\x16\x03\x01\x00\x05hello, not TLS at all\r\n\r\n")
        closed_within(garbage, 5)
    with socket.create_connection(("127.0.0.1", router.port)) as early:
        early.shutdown(socket.SHUT_WR)  # gone before saying anything
        closed_within(early, 5)
    # the router is fine afterwards
    r = httpx.get(f"{router.url}/hello", headers={**AUTH, "host": router.host("sbxa")}, timeout=10)
    assert r.status_code == 200 and r.text.startswith("hello from")


def test_without_a_certificate_every_connection_is_plain(app: App) -> None:
    thread = RouterThread(FakeLookup({"sbxa": app.port})).start()
    try:
        with socket.create_connection(("127.0.0.1", thread.port)) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05junk\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    finally:
        thread.stop()


def test_stop_cuts_connections_still_undecided(app: App, certificate: tuple[Path, Path, Path]) -> None:
    cert, key, _ = certificate
    thread = RouterThread(
        FakeLookup({"sbxa": app.port}), ssl_context=tls_context(cert, key), first_byte_timeout_s=60
    ).start()
    silent = socket.create_connection(("127.0.0.1", thread.port))
    stalled = socket.create_connection(("127.0.0.1", thread.port))
    stalled.sendall(b"\x16")
    try:
        time.sleep(0.2)
        assert thread.router.sniffing.waiting and thread.router.sniffing.handshaking
        thread.stop()
        for sock in (silent, stalled):
            assert closed_within(sock, 5) < 5
    finally:
        silent.close()
        stalled.close()
    assert not thread.router.sniffing.waiting and not thread.router.sniffing.handshaking
