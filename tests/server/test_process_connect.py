"""``WS .../process/{pid}/connect`` (spec/processes.md): a process's events and its stdin on one
WebSocket; a refused stdin frame is an error frame, not the end; bad keys, sandboxes and pids
refuse the upgrade. Real server, real sandboxes, both backends."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def start(http: httpx.Client, sid: str, command: str, **extra: Any) -> int:
    r = http.post(f"/v1/sandbox/{sid}/process/start", json={"command": command, **extra})
    assert r.status_code == 201, r.text
    pid: int = r.json()["pid"]
    return pid


def ws(server: ServerProcess, sid: str, pid: int, key: str | None = None, **params: str) -> ClientConnection:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = f"ws://127.0.0.1:{server.port}/v1/sandbox/{sid}/process/{pid}/connect?{query}"
    return connect(
        url, additional_headers={"authorization": f"Bearer {key or server.api_key}"}, open_timeout=30
    )


def receive(socket: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(socket.recv(timeout=30))
    return event


def test_events_and_stdin_on_one_socket(http: httpx.Client, server: ServerProcess, sandbox: str) -> None:
    pid = start(http, sandbox, "echo ready; cat", stdin=True)
    with ws(server, sandbox, pid) as socket:
        assert receive(socket) == {"type": "stdout", "seq": 1, "data": "ready\n"}
        socket.send(json.dumps({"data": "hello\n"}))
        assert receive(socket)["data"] == "hello\n"
        socket.send(b"raw bytes\n")
        assert receive(socket)["data"] == "raw bytes\n"
        socket.send("not json")
        error = receive(socket)
        assert (error["type"], error["status"]) == ("error", 400), error
        socket.send(json.dumps({"eof": True}))
        last = receive(socket)
        assert (last["type"], last["exit_code"]) == ("exit", 0), last
        with pytest.raises(ConnectionClosedOK):  # closed by the server after exit
            socket.recv(timeout=10)
    # reconnecting replays what is kept, from `since`
    with ws(server, sandbox, pid, since="1") as socket:
        assert receive(socket)["data"] == "hello\n"


def test_stdin_to_a_process_without_it_is_an_error_frame(
    http: httpx.Client, server: ServerProcess, sandbox: str
) -> None:
    pid = start(http, sandbox, "sleep 30")
    try:
        with ws(server, sandbox, pid) as socket:
            socket.send(json.dumps({"data": "x"}))
            error = receive(socket)
            assert (error["type"], error["status"]) == ("error", 409), error
    finally:
        http.delete(f"/v1/sandbox/{sandbox}/process/{pid}")


def test_bad_key_sandbox_and_pid_refuse_the_upgrade(server: ServerProcess, sandbox: str) -> None:
    for sid, pid, key, status in (
        (sandbox, 1, "atl_wrong", 401),
        ("sbx-nope", 1, None, 404),
        (sandbox, 999999, None, 404),
    ):
        with pytest.raises(InvalidStatus) as refused:
            ws(server, sid, pid, key)
        assert refused.value.response.status_code == status
