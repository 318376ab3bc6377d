"""The router's request-head rules on their own (no control plane): one ``Host`` header, an
absolute-form target that agrees with it, and no credential headers forwarded. The real router
with a fake look-up in front of ``sandbox_app.py`` on loopback, both look-up paths."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.router._local import KEY, App, FakeLookup, RouterThread


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    started = App.start(tmp_path_factory.mktemp("app") / "app.log")
    yield started
    started.stop()


@pytest.fixture(params=["cached", "resolved"])
def router(request: pytest.FixtureRequest, app: App) -> Iterator[RouterThread]:
    lookup = FakeLookup(ports={"sbxa": app.port, "sbxb": app.port}, tokens={}, fast=request.param == "cached")
    thread = RouterThread(lookup).start()
    yield thread
    thread.stop()


def raw(router: RouterThread, head: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_two_host_headers_are_refused(router: RouterThread) -> None:
    a, b = router.host("sbxa"), router.host("sbxb")
    for hosts in ((a, b), (a, a)):
        head = f"GET /echo HTTP/1.1\r\nHost: {hosts[0]}\r\nHost: {hosts[1]}\r\nAuthorization: {KEY}\r\n"
        assert raw(router, head + "Connection: close\r\n\r\n")[0] == 400


def test_absolute_form_must_match_the_host_header(router: RouterThread) -> None:
    a, b = router.host("sbxa"), router.host("sbxb")
    tail = f"Authorization: {KEY}\r\nConnection: close\r\n\r\n"
    assert raw(router, f"GET http://{b}/echo HTTP/1.1\r\nHost: {a}\r\n{tail}")[0] == 400
    status, body = raw(router, f"GET http://{a.upper()}/echo?q=1 HTTP/1.1\r\nHost: {a}\r\n{tail}")
    assert status == 200 and json.loads(body)["path"] == "/echo?q=1"  # origin form for the app


def test_credentials_are_not_forwarded(router: RouterThread) -> None:
    with httpx.Client(base_url=router.url, timeout=30, trust_env=False) as client:
        headers = {
            "host": router.host("sbxa"),
            "authorization": f"Bearer {KEY}",
            "x-api-key": "secret-1",
            "proxy-authorization": "Basic c2VjcmV0LTI=",
            "x-kept": "yes",
        }
        seen = client.get("/echo", headers=headers).json()["headers"]
    assert seen["x-kept"] == "yes"
    assert not {"authorization", "x-api-key", "proxy-authorization"} & set(seen), seen
