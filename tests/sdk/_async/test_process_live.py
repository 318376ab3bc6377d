"""``sandbox.process`` live processes against a fake control plane: streamed ``execute`` with
callbacks, ``start`` handles (events, wait, stdin, signals), ``list``, and ``connect`` picking a
dropped stream up ``since`` the last event, so nothing is missed or repeated."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from atoll import AsyncClient, InvalidArgument, NotFoundError, TransportError
from atoll.sdk._async.sandbox import AsyncSandbox

from .._mock import Chunks, Router, sandbox_json

SID = "sbx-abc123"
BASE = f"/v1/sandbox/{SID}/process"


def make_client(router: Router) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
    )


async def created(router: Router) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router).sandboxes.create(template_name="base")


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]


def stream(chunks: list[bytes]) -> httpx.Response:
    return httpx.Response(200, stream=Chunks(chunks), headers={"content-type": "text/event-stream"})


async def test_execute_with_callbacks_streams_and_returns_the_result() -> None:
    router = Router()
    sandbox = await created(router)
    frames = sse(
        {"seq": 1, "type": "stdout", "data": "a\n"},
        {"seq": 2, "type": "stderr", "data": "oops\n"},
        {"seq": 3, "type": "stdout", "data": "b\n"},
        {"seq": 4, "type": "exit", "exit_code": 2},
    )
    split = [frames[0][:7], frames[0][7:] + frames[1], *frames[2:]]  # chunks split anywhere
    router.handle("POST", f"{BASE}/execute/stream", lambda _: stream(split))
    out: list[str] = []
    err: list[str] = []
    result = await sandbox.process.execute(command="x", on_stdout=out.append, on_stderr=err.append)
    assert out == ["a\n", "b\n"] and err == ["oops\n"]
    assert (result.exit_code, result.stdout, result.stderr) == (2, "a\nb\n", "oops\n")
    assert json.loads(router.last.content) == {"command": "x"}


async def test_execute_without_callbacks_uses_the_plain_endpoint() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{BASE}/execute", json={"exit_code": 0, "stdout": "hi\n", "stderr": ""})
    assert (await sandbox.process.execute(command="echo hi")).stdout == "hi\n"


async def test_a_stream_cut_before_exit_is_an_error_for_execute() -> None:
    router = Router()
    sandbox = await created(router)
    router.handle(
        "POST", f"{BASE}/execute/stream", lambda _: stream(sse({"seq": 1, "type": "stdout", "data": "a"}))
    )
    with pytest.raises(TransportError):
        await sandbox.process.execute(command="x", on_stdout=lambda _: None)


async def test_start_then_iterate_reconnects_since_the_last_event() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{BASE}/start", 201, json={"pid": 42, "command": "c", "running": True})
    answers = [
        sse({"seq": 1, "type": "stdout", "data": "1\n"}, {"seq": 2, "type": "stdout", "data": "2\n"}),
        # the server replays from since; an overlap would be dropped, never repeated
        sse({"seq": 2, "type": "stdout", "data": "2\n"}, {"seq": 3, "type": "stdout", "data": "3\n"})
        + sse({"seq": 4, "type": "exit", "exit_code": 0}),
    ]
    sinces: list[str] = []

    def events(request: httpx.Request) -> httpx.Response:
        sinces.append(request.url.params["since"])
        return stream(answers[len(sinces) - 1])

    router.handle("GET", f"{BASE}/42/events", events)
    handle = await sandbox.process.start("c", stdin=True, tag="t", envs={"A": "b"})
    assert handle.pid == 42
    assert json.loads(router.requests[-1].content) == {
        "command": "c",
        "envs": {"A": "b"},
        "timeout": 0,
        "stdin": True,
        "tag": "t",
    }
    got = [e async for e in handle]
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert "".join(e.data for e in got) == "1\n2\n3\n"
    assert sinces == ["0", "2"]
    assert handle.exit_code == 0 and handle.since == 4


async def test_wait_collects_the_output() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{BASE}/start", 201, json={"pid": 7})
    frames = sse({"seq": 1, "type": "stdout", "data": "hello\n"}, {"seq": 2, "type": "exit", "exit_code": 0})
    router.handle("GET", f"{BASE}/7/events", lambda _: stream(frames))
    handle = await sandbox.process.start("cat", stdin=True)
    result = await handle.wait()
    assert (result.exit_code, result.stdout) == (0, "hello\n")


async def test_stdin_signal_kill_and_list() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{BASE}/start", 201, json={"pid": 7})
    router.on("POST", f"{BASE}/7/stdin", 204)
    router.on("POST", f"{BASE}/7/signal", 204)
    router.on("DELETE", f"{BASE}/7", 204)
    items = [{"pid": 7, "command": "cat", "running": True, "tag": "x", "started_at": "2026-01-01T00:00:00Z"}]
    router.on("GET", BASE, json={"items": items})
    handle = await sandbox.process.start("cat", stdin=True)
    await handle.send_stdin("hello\n")
    assert json.loads(router.last.content) == {"data": "hello\n", "eof": False}
    await handle.close_stdin()
    assert json.loads(router.last.content) == {"data": "", "eof": True}
    await handle.signal("SIGTERM")
    assert json.loads(router.last.content) == {"signal": "SIGTERM"}
    with pytest.raises(InvalidArgument):
        await handle.signal("SIGBOGUS")
    await handle.kill()
    assert router.last.method == "DELETE"
    listed = await sandbox.process.list()
    assert [(p.pid, p.running, p.tag) for p in listed] == [(7, True, "x")]


async def test_connect_to_an_unknown_pid_is_not_found() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("GET", f"{BASE}/9", 404, json={"message": "process not found"})
    with pytest.raises(NotFoundError):
        await sandbox.process.connect(9)


async def test_connect_replays_since() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("GET", f"{BASE}/9", json={"pid": 9, "command": "c", "running": True})
    frames = sse({"seq": 11, "type": "stdout", "data": "x"}, {"seq": 12, "type": "exit", "exit_code": 1})
    router.handle("GET", f"{BASE}/9/events", lambda _: stream(frames))
    handle = await sandbox.process.connect(9, since=10)
    assert [e.seq async for e in handle] == [11, 12]
    assert router.last.url.params["since"] == "10"


async def test_a_stream_that_keeps_ending_without_progress_is_an_error() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", f"{BASE}/start", 201, json={"pid": 5})
    router.handle("GET", f"{BASE}/5/events", lambda _: stream([b": keepalive\n\n"]))
    handle = await sandbox.process.start("sleep 9")
    with pytest.raises(TransportError):
        [e async for e in handle]
