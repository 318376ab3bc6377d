"""Sandbox URLs end to end (issue 3 acceptance): a real ``atoll serve``, real sandboxes, servers
started inside them with ``process.execute``, reached through the router."""

from __future__ import annotations

import hashlib
import random
import socket
import sqlite3
import time

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests._support import api
from tests._support.server import SANDBOX_DOMAIN, ServerProcess
from tests.router.conftest import app_log, invoke_url, start_app, via_router, wait_listening, websocket_url

pytestmark = pytest.mark.privileged


def test_http_server_answers_with_and_without_port(
    http: httpx.Client, router: httpx.Client, server: ServerProcess, no_leaks: None
) -> None:
    sandbox = api.create(http, memory=512)["id"]
    try:
        api.run(
            http,
            sandbox,
            "mkdir -p /srv/a /srv/b && echo default > /srv/a/index.html && echo three > /srv/b/index.html"
            " && (cd /srv/a && nohup python3 -m http.server 8080 >/dev/null 2>&1 &)"
            " && (cd /srv/b && nohup python3 -m http.server 3000 >/dev/null 2>&1 &)",
        )
        wait_listening(http, sandbox, 8080)
        wait_listening(http, sandbox, 3000)
        for url, body in [
            (invoke_url(server, sandbox, "/index.html"), "default\n"),
            (invoke_url(server, sandbox, "/index.html", port=8080), "default\n"),
            (invoke_url(server, sandbox, "/index.html", port=3000), "three\n"),
        ]:
            path, headers = via_router(url)
            for auth in (
                {"authorization": server.api_key},
                server.headers,
                {"leap0-authorization": server.api_key},
            ):
                r = router.get(path, headers={**headers, **auth})
                assert (r.status_code, r.text) == (200, body), url
        # header routing: one fixed host, the sandbox and port in headers
        r = router.get(
            "/index.html",
            headers={"atoll-sandbox-id": sandbox, "atoll-sandbox-port": "3000", **server.headers},
        )
        assert (r.status_code, r.text) == (200, "three\n")
        r = router.get("/index.html", headers={"atoll-sandbox-id": sandbox, **server.headers})
        assert (r.status_code, r.text) == (200, "default\n")
    finally:
        api.delete(http, sandbox)


def test_real_name_resolution_when_available(server: ServerProcess, app_sandbox: str) -> None:
    """With libnss-myhostname, ``*.localhost`` resolves to ::1 / 127.0.0.1 and the URL works as is."""
    url = invoke_url(server, app_sandbox, "/hello")
    try:
        socket.getaddrinfo(f"{app_sandbox}.{SANDBOX_DOMAIN}", server.router_port)
    except socket.gaierror:
        pytest.skip("*.localhost does not resolve here (apt-get install libnss-myhostname)")
    r = httpx.get(url, headers=server.headers, timeout=30, trust_env=False)
    assert (r.status_code, r.text) == (200, "hello from 8080")


def test_20mb_upload_and_download_intact(
    router: httpx.Client, server: ServerProcess, app_sandbox: str
) -> None:
    data = random.Random(20).randbytes(20 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    path, headers = via_router(invoke_url(server, app_sandbox, "/upload"))
    r = router.post(path, content=data, headers={**headers, **server.headers})
    assert r.status_code == 200, r.text
    assert (r.json()["length"], r.json()["sha256"]) == (len(data), digest)
    for chunked in ("", "1"):
        path, headers = via_router(
            invoke_url(server, app_sandbox, f"/bytes?n={len(data)}&seed=20&chunked={chunked}")
        )
        received = hashlib.sha256()
        size = 0
        with router.stream("GET", path, headers={**headers, **server.headers}) as r:
            assert r.status_code == 200
            for piece in r.iter_raw():
                received.update(piece)
                size += len(piece)
        assert (size, received.hexdigest()) == (len(data), digest)


def test_sse_events_arrive_one_by_one(router: httpx.Client, server: ServerProcess, app_sandbox: str) -> None:
    path, headers = via_router(invoke_url(server, app_sandbox, "/sse?n=6&every=0.4"))
    events: list[tuple[float, float]] = []  # (sent by the server, received here), unix time
    with router.stream("GET", path, headers={**headers, **server.headers}) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append((float(line.split()[2]), time.time()))
    assert len(events) == 6
    # each event is received right after it was produced, long before the stream ends
    assert all(received - sent < 0.25 for sent, received in events), events
    assert events[0][1] < events[-1][0] - 1.5


def test_websocket_echo_in_order(server: ServerProcess, app_sandbox: str) -> None:
    url = websocket_url(server, app_sandbox, "/ws")
    sock = socket.create_connection(("127.0.0.1", server.router_port))
    with ws_connect(url, sock=sock, additional_headers=server.headers, proxy=None) as ws:
        ws.send("hello text")
        assert ws.recv(timeout=10) == "hello text"
        blob = random.Random(1).randbytes(100_000)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
        for i in range(1000):
            ws.send(f"m{i}" if i % 2 else f"m{i}".encode())
        received = [ws.recv(timeout=10) for _ in range(1000)]
        assert received == [f"m{i}" if i % 2 else f"m{i}".encode() for i in range(1000)]
    assert ws.close_code == 1000


def test_websocket_url_with_port_and_server_close(server: ServerProcess, app_sandbox: str) -> None:
    from websockets.exceptions import ConnectionClosedOK

    url = websocket_url(server, app_sandbox, "/ws", port=8080)
    sock = socket.create_connection(("127.0.0.1", server.router_port))
    with ws_connect(url, sock=sock, additional_headers={"authorization": server.api_key}, proxy=None) as ws:
        ws.send("close-me")
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
    assert ws.close_code == 1000


def test_no_or_wrong_key_gets_401_and_never_reaches_the_sandbox(
    http: httpx.Client, router: httpx.Client, server: ServerProcess, app_sandbox: str
) -> None:
    marker = f"/echo?probe={time.monotonic_ns()}"
    path, headers = via_router(invoke_url(server, app_sandbox, marker))
    for auth in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "wrong"},
        {"leap0-authorization": "x"},
    ):
        r = router.get(path, headers={**headers, **auth})
        assert r.status_code == 401, r.text
        assert r.json()["message"]
        r = router.post(path, content=b"y" * 1_000_000, headers={**headers, **auth})
        assert r.status_code == 401
    sock = socket.create_connection(("127.0.0.1", server.router_port))
    with pytest.raises(Exception, match="401"):
        ws_connect(websocket_url(server, app_sandbox, marker), sock=sock, proxy=None)
    assert router.get(path, headers={**headers, **server.headers}).status_code == 200  # the probe works
    log = app_log(http, app_sandbox)
    assert log.count(marker) == 1, log  # only the authorised request arrived
    # nor does the key reach the sandbox
    r = router.get(
        via_router(invoke_url(server, app_sandbox, "/echo"))[0], headers={**headers, **server.headers}
    )
    assert server.api_key not in r.text


def test_presigned_url_until_deleted_or_expired(
    http: httpx.Client, router: httpx.Client, server: ServerProcess, app_sandbox: str
) -> None:
    r = http.post(f"/v1/sandbox/{app_sandbox}/presigned-url", json={"port": 8080})
    assert r.status_code == 201, r.text
    grant = r.json()
    assert set(grant) == {"id", "token", "url", "sandbox_id", "port", "expires_at", "created_at"}
    assert all(grant.values()) and grant["sandbox_id"] == app_sandbox and grant["port"] == 8080
    assert grant["url"] == f"https://{grant['token']}.{SANDBOX_DOMAIN}:{server.router_port}/"
    path, headers = via_router(grant["url"] + "hello")
    r = router.get(path, headers=headers)  # no key
    assert (r.status_code, r.text) == (200, "hello from 8080")
    # stored only as a hash (looked at in the SQLite file; the same code writes PostgreSQL)
    if server.database_url is None:
        with sqlite3.connect(server.data_dir / "atoll.db") as db:
            row = db.execute("select token_hash from presigned_urls where id = ?", (grant["id"],)).fetchone()
            dump = "\n".join(db.iterdump())
        assert row[0] == hashlib.sha256(grant["token"].encode()).hexdigest() and grant["token"] not in dump
    # deleted: 404 at once
    assert http.delete(f"/v1/sandbox/{app_sandbox}/presigned-url/{grant['id']}").status_code == 204
    assert router.get(path, headers=headers).status_code == 404
    assert http.delete(f"/v1/sandbox/{app_sandbox}/presigned-url/{grant['id']}").status_code == 404
    # expired: 401
    short = http.post(
        f"/v1/sandbox/{app_sandbox}/presigned-url/", json={"port": 8080, "expires_in": 2}
    ).json()
    path, headers = via_router(short["url"] + "hello")
    assert router.get(path, headers=headers).status_code == 200
    time.sleep(2.2)
    r = router.get(path, headers=headers)
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_presigned_url_api_validation(http: httpx.Client, app_sandbox: str) -> None:
    for body in ({}, {"port": 0}, {"port": 65536}, {"port": "80"}, {"port": 80, "expires_in": 0}):
        r = http.post(f"/v1/sandbox/{app_sandbox}/presigned-url", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["errors"]
    assert http.post("/v1/sandbox/sbxnope/presigned-url", json={"port": 80}).status_code == 404
    r = httpx.post(
        f"{http.base_url}/v1/sandbox/{app_sandbox}/presigned-url",
        json={"port": 80},
        headers={"authorization": "no"},
    )
    assert r.status_code == 401


def test_paused_sandbox_resumes_on_request(
    http: httpx.Client, router: httpx.Client, server: ServerProcess, no_leaks: None
) -> None:
    sandbox = api.create(http, memory=512)["id"]
    try:
        start_app(http, sandbox)
        path, headers = via_router(invoke_url(server, sandbox, "/hello"))
        assert router.get(path, headers={**headers, **server.headers}).status_code == 200  # warm the cache
        assert http.post(f"/v1/sandbox/{sandbox}/pause").json()["state"] == "paused"
        assert http.get(f"/v1/sandbox/{sandbox}/").json()["state"] == "paused"
        r = router.get(path, headers={**headers, **server.headers}, timeout=30)
        assert (r.status_code, r.text) == (200, "hello from 8080")
        assert http.get(f"/v1/sandbox/{sandbox}/").json()["state"] == "running"
        # a presigned URL resumes it too
        url = http.post(f"/v1/sandbox/{sandbox}/presigned-url", json={"port": 8080}).json()["url"]
        assert http.post(f"/v1/sandbox/{sandbox}/pause").status_code == 201
        path, headers = via_router(url + "hello")
        assert router.get(path, headers=headers, timeout=30).status_code == 200
        assert http.get(f"/v1/sandbox/{sandbox}/").json()["state"] == "running"
    finally:
        api.delete(http, sandbox)


def test_stopped_deleted_and_silent_ports_answer_clearly(
    http: httpx.Client, router: httpx.Client, server: ServerProcess, no_leaks: None
) -> None:
    sandbox = api.create(http, memory=512)["id"]
    auth = server.headers
    # nothing listening: 502 naming the port, quickly
    path, headers = via_router(invoke_url(server, sandbox, "/", port=4321))
    started = time.monotonic()
    r = router.get(path, headers={**headers, **auth})
    assert r.status_code == 502 and "4321" in r.json()["message"]
    assert time.monotonic() - started < 1.0
    path, headers = via_router(invoke_url(server, sandbox, "/"))
    assert router.get(path, headers={**headers, **auth}).status_code == 502  # PORT 8080, nothing there
    # stopped: 409
    assert http.post(f"/v1/sandbox/{sandbox}/stop").status_code == 200
    r = router.get(path, headers={**headers, **auth})
    assert r.status_code == 409 and "stopped" in r.json()["message"]
    # deleted: 404
    api.delete(http, sandbox)
    r = router.get(path, headers={**headers, **auth})
    assert r.status_code == 404 and sandbox in r.json()["message"]
    # not a sandbox host at all
    r = router.get("/", headers={"host": "example.com", **auth})
    assert r.status_code == 404 and "message" in r.json()


def test_deleting_a_sandbox_cuts_its_open_connections(
    http: httpx.Client, server: ServerProcess, no_leaks: None
) -> None:
    from websockets.exceptions import ConnectionClosed

    sandbox = api.create(http, memory=512)["id"]
    try:
        start_app(http, sandbox)
        sock = socket.create_connection(("127.0.0.1", server.router_port))
        with ws_connect(
            websocket_url(server, sandbox, "/ws"), sock=sock, additional_headers=server.headers, proxy=None
        ) as ws:
            ws.send("still there?")
            assert ws.recv(timeout=10) == "still there?"
            api.delete(http, sandbox)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert time.monotonic() - started < 5
    finally:
        http.delete(f"/v1/sandbox/{sandbox}/")
