"""The proxy on its own (no control plane, no sandboxes): the real router with a fake look-up in
front of ``sandbox_app.py`` on loopback. Every test runs against both look-up paths: answers
from the cache (no await on the request path) and answers that need ``resolve``."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.router._local import DOMAIN, KEY, App, FakeLookup, RouterThread, free_port

AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, App]]:
    tmp = tmp_path_factory.mktemp("apps")
    a, b = App.start(tmp / "a.log"), App.start(tmp / "b.log")
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(params=["cached", "resolved"])
def lookup(request: pytest.FixtureRequest, apps: tuple[App, App]) -> FakeLookup:
    a, b = apps
    return FakeLookup(
        ports={"sbxa": a.port, "sbxb": b.port, "sbxdead": free_port()},
        tokens={"atptoken": ("sbxa", a.port)},
        fast=request.param == "cached",
    )


@pytest.fixture
def router(lookup: FakeLookup) -> Iterator[RouterThread]:
    thread = RouterThread(lookup).start()
    yield thread
    thread.stop()


@pytest.fixture
def client(router: RouterThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.url, timeout=30, trust_env=False) as c:
        yield c


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length from ``sock`` (``buf`` keeps what was read past it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {bytes(buf)!r}"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buf[:] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def test_host_routing_default_and_explicit_port(
    client: httpx.Client, router: RouterThread, apps: tuple[App, App]
) -> None:
    a, b = apps
    r = client.get("/hello", headers={"host": router.host("sbxa"), **AUTH})
    assert (r.status_code, r.text) == (200, f"hello from {a.port}")
    r = client.get("/hello", headers={"host": router.host("sbxa", b.port), **AUTH})
    assert (r.status_code, r.text) == (200, f"hello from {b.port}")
    r = client.get("/hello", headers={"host": router.host("sbxb").upper(), **AUTH})
    assert r.text == f"hello from {b.port}"


def test_header_routing_many_sandboxes_one_connection(router: RouterThread, apps: tuple[App, App]) -> None:
    a, b = apps
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        buf = bytearray()
        for sandbox, app in [("sbxa", a), ("sbxb", b), ("sbxa", a), ("sbxb", b)]:
            sock.sendall(
                f"GET /hello HTTP/1.1\r\nHost: shared\r\nAtoll-Sandbox-Id: {sandbox}\r\n"
                f"Authorization: {KEY}\r\n\r\n".encode()
            )
            status, _, body = read_response(sock, buf)
            assert (status, body) == (200, f"hello from {app.port}".encode())
        sock.sendall(
            f"GET /hello HTTP/1.1\r\nHost: x\r\nAtoll-Sandbox-Id: sbxa\r\nAtoll-Sandbox-Port: {b.port}\r\n"
            f"leap0-authorization: {KEY}\r\n\r\n".encode()
        )
        assert read_response(sock, buf)[2] == f"hello from {b.port}".encode()


def test_pipelined_requests_across_sandboxes_keep_order(router: RouterThread, apps: tuple[App, App]) -> None:
    a, b = apps
    order = ["sbxa", "sbxa", "sbxb", "sbxa", "sbxb", "sbxb"]
    requests = b"".join(
        f"GET /hello HTTP/1.1\r\nHost: {router.host(s)}\r\nAuthorization: {KEY}\r\n\r\n".encode()
        for s in order
    )
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(requests)
        buf = bytearray()
        bodies = [read_response(sock, buf)[2] for _ in order]
    ports = {"sbxa": a.port, "sbxb": b.port}
    assert bodies == [f"hello from {ports[s]}".encode() for s in order]


def test_auth_headers_are_stripped_and_forwarded_headers_added(
    client: httpx.Client, router: RouterThread
) -> None:
    for headers in (
        {"authorization": KEY},
        {"authorization": f"Bearer {KEY}"},
        {"leap0-authorization": KEY},
    ):
        r = client.get("/echo", headers={"host": router.host("sbxa"), "x-custom": "kept", **headers})
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert "authorization" not in seen and "leap0-authorization" not in seen
        assert seen["x-custom"] == "kept"
        assert seen["host"] == router.host("sbxa")
        assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-forwarded-proto"] == "http"
    r = client.get("/echo", headers={"host": "any", "atoll-sandbox-id": "sbxa", **AUTH})
    assert "atoll-sandbox-id" not in r.json()["headers"]
    r = client.get("/echo", headers={"host": router.host("sbxa"), "x-forwarded-for": "203.0.113.9", **AUTH})
    assert r.json()["headers"]["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_missing_or_wrong_key_is_401_and_never_reaches_the_app(
    client: httpx.Client, router: RouterThread, apps: tuple[App, App]
) -> None:
    marker = f"/echo?unauthorized={time.monotonic_ns()}"
    for headers in ({}, {"authorization": "Bearer nope"}, {"leap0-authorization": "nope"}):
        r = client.get(marker, headers={"host": router.host("sbxa"), **headers})
        assert r.status_code == 401
        assert "message" in r.json()
        r = client.post(marker, content=b"x" * 300_000, headers={"host": router.host("sbxa"), **headers})
        assert r.status_code == 401
    assert marker not in apps[0].log.read_text()


def test_errors_are_json(client: httpx.Client, router: RouterThread) -> None:
    r = client.get("/", headers={"host": "elsewhere.example", **AUTH})
    assert r.status_code == 404 and "Atoll-Sandbox-Id" in r.json()["message"]
    r = client.get("/", headers={"host": router.host("sbxnope"), **AUTH})
    assert r.status_code == 404 and "sbxnope" in r.json()["message"]
    r = client.get("/", headers={"host": f"sbxa-99999.{DOMAIN}", **AUTH})
    assert r.status_code == 400
    started = time.monotonic()
    r = client.get("/", headers={"host": router.host("sbxdead"), **AUTH})
    assert r.status_code == 502
    assert "nothing is listening on port" in r.json()["message"]
    assert time.monotonic() - started < 1.0
    # the connection stays usable after every one of these
    assert client.get("/hello", headers={"host": router.host("sbxa"), **AUTH}).status_code == 200


def test_presigned_token_needs_no_key(
    client: httpx.Client, router: RouterThread, apps: tuple[App, App]
) -> None:
    r = client.get("/hello", headers={"host": f"atptoken.{DOMAIN}"})
    assert (r.status_code, r.text) == (200, f"hello from {apps[0].port}")
    assert client.get("/hello", headers={"host": f"atpother.{DOMAIN}"}).status_code == 404


def test_large_bodies_stream_both_ways(client: httpx.Client, router: RouterThread) -> None:
    host = {"host": router.host("sbxa"), **AUTH}
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    r = client.post("/upload", content=data, headers=host)
    assert r.json()["length"] == len(data) and r.json()["sha256"] == hashlib.sha256(data).hexdigest()

    def pieces() -> Iterator[bytes]:  # no length: httpx sends it chunked
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    r = client.post("/upload", content=pieces(), headers=host)
    assert r.json()["length"] == len(data) and r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    for chunked in ("", "1"):
        r = client.get(f"/bytes?n={len(data)}&seed=7&chunked={chunked}", headers=host)
        assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_head_close_delimited_and_continue(router: RouterThread) -> None:
    host = router.host("sbxa")
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        buf = bytearray()
        sock.sendall(f"HEAD /echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: {KEY}\r\n\r\n".encode())
        sock.settimeout(5)
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length" in head and rest == b""
        buf.clear()
        body = b"hello?"
        sock.sendall(
            f"POST /echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: {KEY}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        assert buf.startswith(b"HTTP/1.1 100")
        del buf[: buf.index(b"\r\n\r\n") + 4]
        sock.sendall(body)
        status, _, payload = read_response(sock, buf)
        assert status == 200 and json.loads(payload)["length"] == len(body)
        sock.sendall(f"GET /close HTTP/1.1\r\nHost: {host}\r\nAuthorization: {KEY}\r\n\r\n".encode())
        data = bytes(buf)
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"until the end\n" * 1000)


def test_malformed_request_gets_400(router: RouterThread) -> None:
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")


def test_sse_events_arrive_as_produced(client: httpx.Client, router: RouterThread) -> None:
    arrivals = []
    with client.stream("GET", "/sse?n=5&every=0.3", headers={"host": router.host("sbxa"), **AUTH}) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap > 0.2 for gap in gaps), gaps


def test_websocket_echo(router: RouterThread) -> None:
    sock = socket.create_connection(("127.0.0.1", router.port))
    with ws_connect(
        f"ws://{router.host('sbxa')}/ws", sock=sock, additional_headers=AUTH, proxy=None, compression=None
    ) as ws:
        ws.send("text frame")
        assert ws.recv() == "text frame"
        ws.send(b"\x00\x01binary\xff")
        assert ws.recv() == b"\x00\x01binary\xff"
        for i in range(1000):
            ws.send(f"message {i}")
        assert [ws.recv() for _ in range(1000)] == [f"message {i}" for i in range(1000)]
    assert ws.close_code == 1000


def test_websocket_server_side_close(router: RouterThread) -> None:
    from websockets.exceptions import ConnectionClosedOK

    sock = socket.create_connection(("127.0.0.1", router.port))
    with ws_connect(f"ws://{router.host('sbxa')}/ws", sock=sock, additional_headers=AUTH, proxy=None) as ws:
        ws.send("close-me")
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=5)
    assert ws.close_code == 1000


def test_websocket_upgrade_without_key_is_refused(router: RouterThread) -> None:
    sock = socket.create_connection(("127.0.0.1", router.port))
    with pytest.raises(Exception, match="401"):
        ws_connect(f"ws://{router.host('sbxa')}/ws", sock=sock, proxy=None)


def test_tls(tmp_path: Path, lookup: FakeLookup, apps: tuple[App, App]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:*.{DOMAIN}"],
        check=True, capture_output=True,
    )  # fmt: skip
    from atoll.router import tls_context

    thread = RouterThread(lookup, ssl_context=tls_context(cert, key)).start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        host = f"sbxa.{DOMAIN}"
        raw = socket.create_connection(("127.0.0.1", thread.port))
        with client_ctx.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: {KEY}\r\n\r\n".encode())
            status, _, body = read_response(sock, bytearray())
        assert status == 200 and json.loads(body)["headers"]["x-forwarded-proto"] == "https"
        raw = socket.create_connection(("127.0.0.1", thread.port))
        with ws_connect(
            f"wss://{host}/ws",
            sock=raw,
            ssl=client_ctx,
            server_hostname=host,
            additional_headers=AUTH,
            proxy=None,
        ) as ws:
            ws.send("over tls")
            assert ws.recv() == "over tls"
    finally:
        thread.stop()


def test_stop_closes_idle_connections(lookup: FakeLookup) -> None:
    thread = RouterThread(lookup).start()
    sock = socket.create_connection(("127.0.0.1", thread.port))
    sock.sendall(
        f"GET /hello HTTP/1.1\r\nHost: {thread.host('sbxa')}\r\nAuthorization: {KEY}\r\n\r\n".encode()
    )
    assert read_response(sock, bytearray())[0] == 200
    started = time.monotonic()
    thread.stop()
    assert time.monotonic() - started < 1.0
    sock.settimeout(2)
    assert sock.recv(10) == b""
    sock.close()
