"""Sandbox URLs through an API replica (issue #22): one real PostgreSQL, one node (``atoll node
run``) and one API replica (``atoll serve --role api``), both with the cluster token. A sandbox on
the node answers through the REPLICA's router (key header, explicit port, presigned URL, a 5 MiB
upload, a WebSocket echo), each request having passed two routers (the sandbox sees both in
``X-Forwarded-For``) and none of the internal headers; a paused sandbox resumes when reached
through the replica; the node's router refuses forged internal headers (401, the sandbox sees
nothing); and with the node killed the replica's router answers 503 naming it."""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests._support import api
from tests._support.cluster import create_key, side_node
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import SANDBOX_DOMAIN, ServerProcess, serving, side_server
from tests.router.conftest import app_log, start_app

pytestmark = [pytest.mark.privileged]
TOKEN = secrets.token_hex(16)
NODE_ID = "node-h"


class Cluster:
    def __init__(self, node: ServerProcess, replica: ServerProcess, key: str, database: str) -> None:
        self.node, self.replica, self.key, self.database = node, replica, key, database
        self.auth = {"authorization": f"Bearer {key}"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.replica.base_url, headers=self.auth, timeout=120)

    def router(self, process: ServerProcess | None = None) -> httpx.Client:
        """A client for ``process``'s router (the replica's unless said), on loopback."""
        return httpx.Client(base_url=(process or self.replica).router_url, timeout=60, trust_env=False)

    def host(self, sandbox_id: str, port: int | None = None, process: ServerProcess | None = None) -> str:
        label = sandbox_id if port is None else f"{sandbox_id}-{port}"
        return f"{label}.{SANDBOX_DOMAIN}:{(process or self.replica).router_port}"


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("router-hop")
    database = "t_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(database)
    common = ("--database-url", url, "--heartbeat-interval-s", "1", "--node-down-after-s", "3")
    env = {"ATOLL_CLUSTER_TOKEN": TOKEN}
    replica = side_server(tmp / "api", "j", 27, extra_args=(*common, "--role", "api"), extra_env=env)
    # every process names the one public sandbox domain: here the replica's router (as a load
    # balancer in front of the replicas would be), so the URLs the node makes lead there
    public = ("--sandbox-domain", f"{SANDBOX_DOMAIN}:{replica.router_port}")
    node = side_node(
        tmp / "node",
        "h",
        26,
        extra_args=(*common, "--node-id", NODE_ID, *public),
        extra_env=env,
    )
    with serving(node), serving(replica):
        key = create_key(url, "org-rh")
        for process in (node, replica):  # their clean-up (serving) deletes the organisation's sandboxes
            process.api_key = key
        yield Cluster(node, replica, key, database)
        if node.proc is not None and node.proc.poll() is None:
            node.delete_everything()
            assert_no_leaks(node)


@pytest.fixture(scope="module")
def app(cluster: Cluster) -> Iterator[str]:
    """A sandbox (on the node: the replica runs none) running tests/router/sandbox_app.py on 8080."""
    with cluster.api() as http:
        sandbox_id = str(api.create(http, memory=512, timeout=3600)["id"])
        try:
            start_app(http, sandbox_id)
            yield sandbox_id
        finally:
            http.delete(f"/v1/sandbox/{sandbox_id}/")


def test_a_sandbox_on_the_node_answers_through_the_replicas_router(
    cluster: Cluster, app: str, postgres: PostgresServer
) -> None:
    # the node recorded where its router listens (the first router host: loopback here)
    recorded = postgres.psql(f"SELECT router_address FROM nodes WHERE id = '{NODE_ID}'", cluster.database)
    assert recorded == f"http://127.0.0.1:{cluster.node.router_port}", recorded
    with cluster.router() as router:
        hello = router.get("/hello", headers={"host": cluster.host(app), **cluster.auth})
        assert (hello.status_code, hello.text) == (200, "hello from 8080")
        # the explicit port, on the same keep-alive connection, then a body streamed both hops
        assert (
            router.get("/hello", headers={"host": cluster.host(app, 8080), **cluster.auth}).status_code == 200
        )
        body = random.Random(7).randbytes(5 * 1024 * 1024)
        up = router.post("/upload", content=body, headers={"host": cluster.host(app), **cluster.auth})
        assert up.status_code == 200, up.text
        assert up.json()["sha256"] == hashlib.sha256(body).hexdigest()
        seen = router.get("/echo", headers={"host": cluster.host(app), **cluster.auth}).json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    # two routers on the way (the replica's, then the node's), each naming its client
    assert headers["x-forwarded-for"] == "127.0.0.1, 127.0.0.1", headers
    assert headers["x-forwarded-proto"] == "http"
    assert not [k for k in headers if k.startswith("x-atoll") or k == "authorization"], headers
    assert TOKEN not in json.dumps(seen) and cluster.key not in json.dumps(seen)


def test_a_presigned_url_through_the_replica_until_deleted(cluster: Cluster, app: str) -> None:
    with cluster.api() as http, cluster.router() as router:
        grant = http.post(f"/v1/sandbox/{app}/presigned-url", json={"port": 8080}).json()
        host = grant["url"].split("://", 1)[1].rstrip("/")
        assert host == f"{grant['token']}.{SANDBOX_DOMAIN}:{cluster.replica.router_port}"
        r = router.get("/hello", headers={"host": host})  # no key
        assert (r.status_code, r.text) == (200, "hello from 8080")
        # deleted (on the sandbox's node): refused at once through the replica too, though the
        # replica's own cache still knows the grant (the node checks it on every hop)
        assert http.delete(f"/v1/sandbox/{app}/presigned-url/{grant['id']}").status_code == 204
        assert router.get("/hello", headers={"host": host}).status_code == 404


def test_a_websocket_echo_through_the_replicas_router(cluster: Cluster, app: str) -> None:
    url = f"ws://{cluster.host(app)}/ws"
    sock = socket.create_connection(("127.0.0.1", cluster.replica.router_port))
    with ws_connect(url, sock=sock, additional_headers=cluster.auth, proxy=None) as ws:
        ws.send("hello text")
        assert ws.recv(timeout=10) == "hello text"
        blob = random.Random(3).randbytes(200_000)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
        for i in range(200):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=10) for _ in range(200)] == [f"m{i}" for i in range(200)]
    assert ws.close_code == 1000


def test_internal_headers_are_refused_unless_they_carry_the_cluster_token(cluster: Cluster, app: str) -> None:
    marker = f"/echo?probe={time.monotonic_ns()}"
    forged = {"x-atoll-hop-sandbox": app, "x-atoll-hop-org": "org-rh"}
    with cluster.router(cluster.node) as node_router, cluster.router() as replica_router:
        node_host = {"host": cluster.host(app, process=cluster.node)}
        for token in ({}, {"x-atoll-cluster-token": "guessed-" + TOKEN[8:]}, {"x-atoll-cluster-token": ""}):
            r = node_router.get(marker, headers={**node_host, **forged, **token})
            assert r.status_code == 401, r.text
            r = node_router.post(marker, content=b"x" * 100_000, headers={**node_host, **forged, **token})
            assert r.status_code == 401, r.text
        # a client's own key does not make them good, on the replica either
        r = replica_router.get(marker, headers={"host": cluster.host(app), **cluster.auth, **forged})
        assert r.status_code == 401, r.text
        with cluster.api() as http:
            assert marker not in app_log(http, app)  # nothing reached the sandbox
            # the node's router does route by them with the token (what the replica sends)
            trusted = node_router.get(marker, headers={**node_host, **forged, "x-atoll-cluster-token": TOKEN})
            assert trusted.status_code == 200, trusted.text
            assert app_log(http, app).count(marker) == 1


def test_a_paused_sandbox_resumes_when_reached_through_the_replica(cluster: Cluster, app: str) -> None:
    with cluster.api() as http, cluster.router() as router:
        assert router.get("/hello", headers={"host": cluster.host(app), **cluster.auth}).status_code == 200
        assert http.post(f"/v1/sandbox/{app}/pause").json()["state"] == "paused"
        r = router.get("/hello", headers={"host": cluster.host(app), **cluster.auth}, timeout=60)
        assert (r.status_code, r.text) == (200, "hello from 8080")
        assert http.get(f"/v1/sandbox/{app}/").json()["state"] == "running"


def test_a_node_that_is_gone_is_a_503_naming_it(cluster: Cluster, app: str) -> None:
    """Last: the node is killed, then started again (it reconciles; the fixture checks leaks)."""
    cluster.node.kill9()
    try:
        with cluster.router() as router:
            deadline = time.monotonic() + 20
            answers = set()
            while time.monotonic() < deadline:  # first its router does not answer, then it is down
                r = router.get("/hello", headers={"host": cluster.host(app), **cluster.auth})
                assert r.status_code == 503, r.text
                assert NODE_ID in r.json()["message"] and r.headers.get("retry-after"), r.text
                answers.add("is down" if "which is down" in r.json()["message"] else "did not answer")
                if "is down" in answers:
                    break
                time.sleep(0.5)
            assert answers == {"did not answer", "is down"} or answers == {"is down"}, answers
    finally:
        cluster.node.start()
