"""``sandbox.code_interpreter`` against a fake sandbox host: where requests go (the sandbox's own
host, not the control plane), what they carry, how answers and event streams are parsed, and
which errors come out."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from atoll import (
    CODE_INTERPRETER_TEMPLATE,
    AsyncClient,
    AsyncSandbox,
    AtollTimeoutError,
    BadRequestError,
    CodeContext,
    InvalidArgument,
    MalformedResponseError,
    NotFoundError,
    ServerError,
    StreamEvent,
    TransportError,
)

from .._mock import Chunks, Router, sandbox_json

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x80\x00\x00\x01\xe0\x08\x06\x00\x00\x00"
RESULT = {
    "context_id": "ctx-default-python",
    "items": [
        {"is_primary": False, "png": base64.b64encode(PNG).decode(), "text": "<Figure size 640x480>"},
        {"is_primary": True, "text": "6", "html": None, "json": {"a": 1}},
    ],
    "logs": {"stdout": ["hello\n", "world\n"], "stderr": []},
    "error": None,
    "execution_count": 3,
}


def make_client(router: Router, **settings: Any) -> AsyncClient:
    return AsyncClient(
        api_key="k",
        base_url="http://api.test",
        sandbox_domain="sbx.test",
        http_client=httpx.AsyncClient(transport=router.transport()),
        **settings,
    )


async def created(router: Router, **settings: Any) -> AsyncSandbox:
    router.on("POST", "/v1/sandbox", 201, json=sandbox_json())
    return await make_client(router, **settings).sandboxes.create(template_name=CODE_INTERPRETER_TEMPLATE)


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def event_stream(router: Router, chunks: Chunks, status: int = 200) -> None:
    headers = {"content-type": "text/event-stream"}
    router.handle("POST", "/execute/async", lambda _: httpx.Response(status, stream=chunks, headers=headers))


async def test_execute_goes_to_the_sandbox_host_with_a_bearer_key() -> None:
    router = Router()
    sandbox = await created(router)
    assert body(router.last)["template_name"] == "system/code-interpreter:v0.1.0"
    router.on("POST", "/execute", json=RESULT)
    result = await sandbox.code_interpreter.execute("print('hello'); 1 + 5")
    sent = router.last
    assert str(sent.url) == "https://sbx-abc123.sbx.test/execute"
    assert sent.headers["authorization"] == "Bearer k"
    assert body(sent) == {"code": "print('hello'); 1 + 5", "language": "python"}
    assert router.last_timeout() == 300  # the client's default: the code's own limit is 30 s
    assert result.main_text == "6" and result.primary is not None and result.primary.json_data == {"a": 1}
    assert result.stdout == "hello\nworld\n" and result.stderr == "" and result.error is None
    assert (result.execution_count, result.context_id) == (3, "ctx-default-python")
    assert [item.png_bytes() for item in result.images] == [PNG]
    assert result.items[0].formats == ["text", "png"]


async def test_plain_http_sandbox_hosts() -> None:
    router = Router()
    sandbox = await created(router, sandbox_scheme="http")
    router.on("GET", "/healthz", json={"status": "ok"})
    assert await sandbox.code_interpreter.health() is True
    assert str(router.last.url) == "http://sbx-abc123.sbx.test/healthz"
    router.on("GET", "/healthz", json={"status": "starting"})
    assert await sandbox.code_interpreter.health() is False


async def test_the_scheme_the_server_announces_is_used() -> None:
    router = Router()
    router.on("GET", "/v1/health", json={"status": "ok", "sandbox_url": {"scheme": "http"}})
    sandbox = await created(router)
    router.on("POST", "/execute", json=RESULT)
    await sandbox.code_interpreter.execute("1")
    assert str(router.last.url) == "http://sbx-abc123.sbx.test/execute"


async def test_execute_options_and_the_http_timeout() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", "/execute", json=RESULT)
    context = CodeContext(id="ctx 1", language="typescript")
    await sandbox.code_interpreter.execute(
        "console.log(process.env.A)",
        language="TS",
        context_id=context,
        env_vars={"A": "1"},
        timeout_ms=600_000,
    )
    assert body(router.last) == {
        "code": "console.log(process.env.A)",
        "language": "ts",
        "context_id": "ctx 1",
        "env_vars": {"A": "1"},
        "timeout_ms": 600_000,
    }
    assert router.last_timeout() == 610  # outlives the code's own limit
    await sandbox.code_interpreter.execute("1", language=2, timeout_ms=1000, http_timeout=7)
    assert body(router.last)["language"] == "typescript" and router.last_timeout() == 7


async def test_an_exception_in_the_code_is_the_result_not_a_raise() -> None:
    router = Router()
    sandbox = await created(router)
    traceback = (
        'Traceback (most recent call last):\n  File "<cell>", line 1\nZeroDivisionError: division by zero\n'
    )
    answer = {"items": [], "logs": {"stdout": [], "stderr": []}, "execution_count": 1}
    answer["error"] = {"name": "ZeroDivisionError", "value": "division by zero", "traceback": traceback}
    router.on("POST", "/execute", json=answer)
    result = await sandbox.code_interpreter.execute("1 / 0")
    assert result.error is not None and result.error.name == "ZeroDivisionError"
    assert result.error.traceback == traceback and result.main_text is None


async def test_arguments_are_checked_before_anything_is_sent() -> None:
    router = Router()
    sandbox = await created(router)
    sent = len(router.requests)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"language": "cobol"}, "language"),
        ({"language": True}, "language"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"timeout_ms": True}, "timeout_ms"),
        ({"timeout_ms": 1.5}, "timeout_ms"),
        ({"timeout_ms": 24 * 3600 * 1000 + 1}, "timeout_ms"),
        ({"context_id": ""}, "context_id"),
        ({"context_id": "x" * 129}, "context_id"),
        ({"env_vars": {"A=B": "1"}}, "env_vars"),
    ]
    for kwargs, field in bad:
        with pytest.raises(InvalidArgument) as refused:
            await sandbox.code_interpreter.execute("1", **kwargs)
        assert refused.value.field == field, kwargs
    with pytest.raises(InvalidArgument):
        await sandbox.code_interpreter.execute(b"1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await sandbox.code_interpreter.create_context(cwd="")
    with pytest.raises(InvalidArgument):
        await sandbox.code_interpreter.get_context("")
    assert len(router.requests) == sent


async def test_stream_yields_events_as_chunks_arrive() -> None:
    router = Router()
    sandbox = await created(router)
    # Split mid-line, mid-"\r\n" and mid-UTF-8 character; a comment and an int type in between.
    wire = (
        b': keep-alive\r\n\r\ndata: {"type": "stdout", "data": "caf\xc3\xa9\\n"}\r\n\r\n'
        b'data: {"type": 1, "data": "warn\\n"}\n\n'
        b'event: message\ndata: {"type": "exit", "data": "", "code": 0}\n\n'
    )
    cut = wire.index(b"\xc3") + 1
    chunks = Chunks([wire[:20], wire[20:cut], wire[cut : cut + 30], wire[cut + 30 : -3], wire[-3:]])
    event_stream(router, chunks)
    seen: list[tuple[StreamEvent, int]] = []
    async for event in sandbox.code_interpreter.execute_stream(
        "print('café')", context_id="c1", timeout_ms=5000
    ):
        seen.append((event, chunks.sent))
    assert [event for event, _ in seen] == [
        StreamEvent(type="stdout", data="café\n"),
        StreamEvent(type="stderr", data="warn\n"),
        StreamEvent(type="exit", data="", code=0),
    ]
    assert seen[0][1] < len(chunks.chunks)  # handed over before the body ended: not buffered
    sent = router.last
    assert str(sent.url) == "https://sbx-abc123.sbx.test/execute/async"
    assert sent.headers["authorization"] == "Bearer k"
    assert body(sent) == {
        "code": "print('café')",
        "language": "python",
        "context_id": "c1",
        "timeout_ms": 5000,
    }


async def test_closing_the_stream_early_closes_the_connection() -> None:
    router = Router()
    sandbox = await created(router)
    chunks = Chunks([b'data: {"type": "stdout", "data": "%d"}\n\n' % i for i in range(5)])
    event_stream(router, chunks)
    stream = sandbox.code_interpreter.execute_stream("while True: print(1)")
    async for event in stream:
        assert event.data == "0"
        break
    assert not chunks.closed
    await stream.aclose()
    assert chunks.closed and chunks.sent == 1


async def test_stream_failures() -> None:
    router = Router()
    sandbox = await created(router)
    event_stream(router, Chunks([b'data: {"envelope": "error", "error": "kernel died"}\n\n']))
    with pytest.raises(ServerError, match="kernel died"):
        async for _ in sandbox.code_interpreter.execute_stream("1"):
            pass
    event_stream(router, Chunks([b"data: not json\n\n"]))
    with pytest.raises(MalformedResponseError):
        async for _ in sandbox.code_interpreter.execute_stream("1"):
            pass
    event_stream(router, Chunks([b'{"message": "nothing is listening on port 49999"}']), status=502)
    with pytest.raises(ServerError, match=r"system/code-interpreter:v0\.1\.0") as absent:
        async for _ in sandbox.code_interpreter.execute_stream("1"):
            pass
    assert absent.value.status_code == 502 and isinstance(absent.value.__cause__, ServerError)


async def test_error_statuses_map_to_the_error_tree() -> None:
    router = Router()
    sandbox = await created(router)
    router.on("POST", "/execute", 404, json={"message": "context 'gone' not found"})
    with pytest.raises(NotFoundError, match="gone"):
        await sandbox.code_interpreter.execute("1", context_id="gone")
    invalid = {"message": "invalid request", "errors": [{"field": "language", "error": "unsupported"}]}
    router.on("POST", "/execute", 400, json=invalid)
    with pytest.raises(BadRequestError) as bad:
        await sandbox.code_interpreter.execute("1")
    assert bad.value.errors == [{"field": "language", "error": "unsupported"}]
    # A sandbox from another template: nothing listens where the interpreter would.
    router.on("POST", "/execute", 502, json={"message": "nothing is listening on 10.0.0.2:8080"})
    with pytest.raises(ServerError) as absent:
        await sandbox.code_interpreter.execute("1")
    assert absent.value.status_code == 502
    assert (
        CODE_INTERPRETER_TEMPLATE in absent.value.message and "nothing is listening" in absent.value.message
    )
    router.on("GET", "/contexts", 501, json={"message": "not implemented"})
    with pytest.raises(ServerError, match="code-interpreter") as missing:
        await sandbox.code_interpreter.list_contexts()
    assert missing.value.status_code == 501
    router.on("GET", "/healthz", 404, content=b"<h1>Not Found</h1>")
    with pytest.raises(NotFoundError) as other_service:
        await sandbox.code_interpreter.health()
    assert any(CODE_INTERPRETER_TEMPLATE in note for note in other_service.value.__notes__)
    router.on("DELETE", "/contexts/x", 500, json={"message": "boom"})
    with pytest.raises(ServerError, match="boom") as other:
        await sandbox.code_interpreter.delete_context("x")
    assert other.value.message == "boom"  # only 501/502 mean "no interpreter here"


async def test_network_failures_name_the_sandbox_url() -> None:
    router = Router()
    sandbox = await created(router)
    router.fail("POST", "/execute", httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError, match="connection refused") as refused:
        await sandbox.code_interpreter.execute("1")
    assert "sandbox URL: https://sbx-abc123.sbx.test" in refused.value.__notes__
    router.fail("POST", "/execute/async", httpx.ReadTimeout("slow"))
    with pytest.raises(AtollTimeoutError) as slow:
        async for _ in sandbox.code_interpreter.execute_stream("1", http_timeout=1):
            pass
    assert "sandbox URL: https://sbx-abc123.sbx.test" in slow.value.__notes__


async def test_contexts() -> None:
    router = Router()
    sandbox = await created(router)
    context = {"id": "ctx/1", "language": "python", "cwd": "/work"}
    router.on("POST", "/contexts", 201, json=context)
    created_context = await sandbox.code_interpreter.create_context("python3", cwd="/work")
    assert created_context == CodeContext(id="ctx/1", language="python", cwd="/work")
    assert body(router.last) == {"language": "python3", "cwd": "/work"}
    assert str(router.last.url) == "https://sbx-abc123.sbx.test/contexts"
    router.on("GET", "/contexts", json={"items": [context, {"id": "c2", "language": 2, "cwd": "/home/user"}]})
    listed = await sandbox.code_interpreter.list_contexts()
    assert [(c.id, c.language) for c in listed] == [("ctx/1", "python"), ("c2", "typescript")]
    router.on("GET", "/contexts/ctx%2F1", json=context)
    assert await sandbox.code_interpreter.get_context(created_context) == created_context
    router.on("DELETE", "/contexts/ctx%2F1", 204)
    assert await sandbox.code_interpreter.delete_context("ctx/1") is None
    assert router.last.method == "DELETE"
    router.on("GET", "/contexts/c3", 404, json={"message": "context not found"})
    with pytest.raises(NotFoundError, match="context not found"):
        await sandbox.code_interpreter.get_context("c3")
    router.on("POST", "/contexts", 201, json={"language": "python"})
    with pytest.raises(MalformedResponseError):
        await sandbox.code_interpreter.create_context()
