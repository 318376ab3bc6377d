"""An API replica forwards (issue #22, phase 2): one real PostgreSQL, one node (``atoll node
run``) and one API replica (``atoll serve --role api``). A create through the replica is placed
on the node (its room reserved in ``placements``) and made there; exec, a 6 MiB file both ways,
a terminal's WebSocket and the delete go through the replica to the node, streamed; the room is
given back once the sandbox is gone. With the node killed, the replica answers 503 naming the
node (never a hang or a 500) while the record still reads from the shared store."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests._support import api
from tests._support.cluster import create_key, side_node
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess, serving, side_server

pytestmark = [pytest.mark.privileged]
HEARTBEAT_S = 2.0
Cluster = tuple[ServerProcess, ServerProcess, str, str]  # node, replica, API key, database


def _raw_post(server: ServerProcess, headers: dict[str, str], path: str, body: bytes) -> bytes:
    """The answer's first bytes to a request sent as written (httpx would resolve dot segments)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", "Host: atoll", "Content-Type: application/json", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        return conn.recv(4096)


def _until(condition: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.2)


@pytest.fixture
def cluster(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    name = "t_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(name)
    common = ("--database-url", url, "--heartbeat-interval-s", str(HEARTBEAT_S))
    node = side_node(tmp_path / "node", "x", 10, extra_args=(*common, "--node-id", "node-x"))
    replica = side_server(
        tmp_path / "api", "y", 11, extra_args=(*common, "--role", "api", "--node-id", "api-y")
    )
    with serving(node), serving(replica):
        key = create_key(url, "org-fw")
        for process in (node, replica):  # their clean-up (serving) deletes the organisation's sandboxes
            process.api_key = key
        yield node, replica, key, name
        if node.proc is not None and node.proc.poll() is None:
            assert_no_leaks(node)


def test_a_replica_places_creates_on_a_node_and_forwards_what_follows(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    _, replica, key, database = cluster
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=replica.base_url, headers=headers, timeout=120) as http:
        sid = api.create(http, memory=512)["id"]
        # the room goes under the sandbox's id once the answer is on its way (forward._placed)
        placed = f"{sid}|node-x|1|512"
        _until(
            lambda: (
                postgres.psql("SELECT sandbox_id, node_id, vcpu, memory_mib FROM placements", database)
                == placed
            ),
            "the room placed under the sandbox's id",
        )
        assert postgres.psql(f"SELECT node_id FROM sandboxes WHERE id = '{sid}'", database) == "node-x"
        reserved = postgres.psql("SELECT vcpu_reserved, memory_mib_reserved FROM nodes", database)
        assert reserved == "1|512", reserved

        assert api.run(http, sid, "hostname; echo $((6 * 7))")["stdout"].endswith("42\n")
        # a body both ways, streamed through the replica (larger than any one chunk)
        payload = os.urandom(6 * 1024 * 1024)
        wrote = http.post(
            f"/v1/sandbox/{sid}/filesystem/write-file", params={"path": "/tmp/blob"}, content=payload
        )
        assert wrote.status_code == 204, wrote.text
        digest = api.run(http, sid, "sha256sum /tmp/blob")["stdout"].split()[0]
        assert digest == hashlib.sha256(payload).hexdigest()
        with http.stream("POST", f"/v1/sandbox/{sid}/filesystem/read-file", json={"path": "/tmp/blob"}) as r:
            assert r.status_code == 200
            assert b"".join(r.iter_bytes()) == payload
        # a path with dot segments is not relayed (it would resolve to another path on the node)
        dotted = _raw_post(
            replica, headers, f"/v1/sandbox/{sid}/../{sid}/process/execute", b'{"command": "true"}'
        )
        assert dotted.startswith(b"HTTP/1.1 404"), dotted[:200]
        # errors come back from the node as they are

        missing = http.post(f"/v1/sandbox/{sid}/filesystem/read-file", json={"path": "/nope"})
        assert missing.status_code == 404 and missing.json()["message"], missing.text

        # a terminal's WebSocket, both ways
        assert http.post(f"/v1/sandbox/{sid}/pty", json={"id": "t"}).status_code == 201
        ws_url = replica.base_url.replace("http://", "ws://") + f"/v1/sandbox/{sid}/pty/t/connect"
        with connect(ws_url, additional_headers=headers, open_timeout=30) as conn:
            conn.send(b"echo through-the-replica\n")
            seen = b""
            deadline = time.monotonic() + 20
            while b"through-the-replica\r\n" not in seen and time.monotonic() < deadline:
                message = conn.recv(timeout=20)
                assert isinstance(message, bytes)
                seen += message
            assert b"through-the-replica\r\n" in seen, seen[-300:]
        # a refused upgrade is passed on (an unknown key: the node's 401)
        with pytest.raises(Exception, match="401"):
            connect(ws_url, additional_headers={"authorization": "Bearer nope"}, open_timeout=30)

        assert http.delete(f"/v1/sandbox/{sid}/").status_code == 204
        assert http.get(f"/v1/sandbox/{sid}/").status_code == 404
        _until(
            lambda: postgres.psql("SELECT count(*) FROM placements", database) == "0",
            "the deleted sandbox's room given back",
        )
        assert postgres.psql("SELECT vcpu_reserved, memory_mib_reserved FROM nodes", database) == "0|0"


def test_a_replica_answers_503_for_a_node_that_does_not_answer(
    cluster: Cluster,
) -> None:
    node, replica, key, _ = cluster
    bearer = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=replica.base_url, headers=bearer, timeout=120) as http:
        sid = api.create(http)["id"]
        node.kill9()
        try:
            refused = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"})
            assert refused.status_code == 503, refused.text
            assert "did not answer" in refused.json()["message"] and refused.headers.get("retry-after")
            assert http.get(f"/v1/sandbox/{sid}/").json()["state"] in ("running", "failed")  # the store
        finally:
            node.start()  # reconciles; its sandbox is failed or adopted, then deleted here
        http.delete(f"/v1/sandbox/{sid}/")
