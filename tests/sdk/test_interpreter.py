"""The code interpreter's models and pure helpers: lenient parsing, the wire form back, base64
payloads, image sizes, argument checks and the HTTP timeout rule."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from atoll import (
    CODE_INTERPRETER_TEMPLATE,
    CodeContext,
    ExecutionResult,
    InvalidArgument,
    MalformedResponseError,
    OutputItem,
    ServerError,
    StreamEvent,
)
from atoll.sdk._interpreter import (
    check_language,
    execute_http_timeout,
    image_size,
    service_absent,
    stream_event,
)


def png(width: int, height: int) -> bytes:
    """A real (tiny, valid) PNG of that size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + b"\x00" * width for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + b"\xff" + sof0


def test_result_parsing_is_lenient() -> None:
    assert ExecutionResult.from_dict({}) == ExecutionResult()
    odd = ExecutionResult.from_dict(
        {
            "items": "x",
            "logs": {"stdout": ["a", 1, None], "stderr": "b"},
            "error": "e",
            "execution_count": "3",
        }
    )
    assert odd.items == [] and odd.logs.stdout == ["a"] and odd.logs.stderr == []
    assert odd.error is None and odd.execution_count is None
    item = OutputItem.from_dict({"is_primary": 1, "text": 5, "json": [1, 2], "extra": {"k": "v"}})
    assert (item.is_primary, item.text, item.json_data, item.extra) == (False, None, [1, 2], {"k": "v"})


def test_main_text_prefers_the_primary_item_else_the_last() -> None:
    items = [{"text": "first"}, {"text": "primary", "is_primary": True}, {"text": "last"}]
    assert ExecutionResult.from_dict({"items": items}).main_text == "primary"
    assert ExecutionResult.from_dict({"items": items[::2]}).main_text == "last"
    assert ExecutionResult.from_dict({"items": [{"png": "AA=="}]}).main_text is None
    assert ExecutionResult().main_text is None and ExecutionResult().primary is None


def test_wire_form_round_trips() -> None:
    wire = {
        "context_id": "c",
        "items": [
            {
                "is_primary": True,
                "text": "1",
                "html": "<b>1</b>",
                "markdown": None,
                "svg": None,
                "png": None,
                "jpeg": None,
                "pdf": base64.b64encode(b"%PDF-1.4").decode(),
                "latex": None,
                "json": {"a": [1]},
                "javascript": None,
                "extra": None,
            }
        ],
        "logs": {"stdout": ["x\n"], "stderr": ["y\n"]},
        "error": {"name": "E", "value": "v", "traceback": "t"},
        "execution_count": 2,
    }
    result = ExecutionResult.from_dict(wire)
    assert result.to_dict() == wire
    assert result.items[0].formats == ["text", "html", "pdf", "json"]
    assert result.items[0].pdf_bytes() == b"%PDF-1.4" and result.items[0].png_bytes() is None


def test_base64_payloads() -> None:
    image = png(3, 2)
    wrapped = base64.encodebytes(image).decode()  # line-wrapped, as some encoders send it
    assert OutputItem(png=wrapped).png_bytes() == image
    assert OutputItem(jpeg=base64.b64encode(b"\xff\xd8").decode()).jpeg_bytes() == b"\xff\xd8"
    with pytest.raises(MalformedResponseError, match="png"):
        OutputItem(png="not base64!").png_bytes()


def test_image_size() -> None:
    assert image_size(png(640, 480)) == (640, 480)
    assert image_size(jpeg_header(1024, 768)) == (1024, 768)
    assert image_size(b"GIF89a") is None
    assert image_size(b"\xff\xd8\xff") is None  # truncated
    assert image_size(b"\xff\xd8\x00\x00\x00\x00\x00\x00\x00\x00\x00") is None  # not a marker


def test_stream_events() -> None:
    assert stream_event('{"type": "stdout", "data": "x"}') == StreamEvent(type="stdout", data="x")
    assert stream_event('{"type": 2, "code": 1}') == StreamEvent(type="exit", code=1)
    assert stream_event('{"type": 3, "data": "boom"}') == StreamEvent(type="error", data="boom")
    assert stream_event('{"type": "progress", "data": 5}') == StreamEvent(type="progress")
    assert stream_event('{"type": 9}') == StreamEvent(type="9")
    assert stream_event("") is None
    for bad in ("[1]", "nope", '"text"'):
        with pytest.raises(MalformedResponseError):
            stream_event(bad)
    with pytest.raises(ServerError, match="stream failed"):
        stream_event('{"envelope": "error", "message": "stream failed"}')


def test_contexts_parse_int_languages_and_need_an_id() -> None:
    assert CodeContext.from_dict({"id": "c", "language": 1}) == CodeContext(id="c", language="python")
    assert CodeContext.from_dict({"id": "c", "language": 7, "cwd": 3}) == CodeContext(id="c", language="7")
    with pytest.raises(MalformedResponseError):
        CodeContext.from_dict({"language": "python"})


def test_languages() -> None:
    assert [check_language(x) for x in ("Python", " node ", 1, 2)] == [
        "python",
        "node",
        "python",
        "typescript",
    ]
    for bad in ("", "ruby", 3, True, None):
        with pytest.raises(InvalidArgument):
            check_language(bad)


def test_http_timeout_outlives_the_code() -> None:
    assert execute_http_timeout(None, None, 300) is None  # the transport's default applies
    assert execute_http_timeout(1000, None, 300) == 300
    assert execute_http_timeout(900_000, None, 300) == 910
    assert execute_http_timeout(900_000, 5, 300) == 5  # the caller's choice wins


def test_service_absent_keeps_the_type_and_status_and_says_what_to_do() -> None:
    original = ServerError("nothing is listening on 10.0.0.2:8080", status_code=502, body=b"{}")
    error = service_absent(original, "sbx-1")
    assert type(error) is ServerError and error.status_code == 502 and error.body == b"{}"
    assert "sbx-1" in error.message and CODE_INTERPRETER_TEMPLATE in error.message
    assert "nothing is listening" in error.message
