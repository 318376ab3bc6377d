"""The SSE decoder: the same events however the body is cut into chunks."""

from __future__ import annotations

import pytest

from atoll.sdk._sse import SSEDecoder


def decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


WIRE = (
    ": comment\r\n"
    "retry: 1000\r\n"
    "\r\n"
    'data: {"type": "stdout", "data": "é"}\r\n'
    "\r\n"
    "event: message\n"
    "id: 7\n"
    "data:first\r\n"  # cut between "\r" and "\n", this must not read as a blank line
    "data:  second\n"
    "\n"
    "data: cr\r\r"
    "data\n"
    "\n"
).encode()
EXPECTED = ['{"type": "stdout", "data": "é"}', "first\n second", "cr", ""]


def test_whole_body() -> None:
    assert decode([WIRE]) == EXPECTED


def test_every_way_to_cut_the_body_in_three() -> None:
    for i in range(len(WIRE) + 1):
        for j in range(i, len(WIRE) + 1):
            assert decode([WIRE[:i], WIRE[i:j], WIRE[j:]]) == EXPECTED, (i, j)


def test_byte_by_byte_events_come_out_when_complete() -> None:
    decoder = SSEDecoder()
    out: list[list[str]] = [decoder.feed(bytes([b])) for b in b"data: a\n\ndata: b\n\n"]
    assert out[8] == ["a"] and out[-1] == ["b"]
    assert sum(len(x) for x in out) == 2


@pytest.mark.parametrize(
    ("wire", "events"),
    [
        (b"data: last", ["last"]),  # cut off before its blank line: kept
        (b"data: last\r", ["last"]),
        (b"data: a\n\n: only a comment\n", ["a"]),
        (b"event: ping\n\n", []),  # no data field: no event
        (b"", []),
        (b"data: \xff\n\n", ["\ufffd"]),  # invalid UTF-8 does not stop the stream
    ],
)
def test_edges(wire: bytes, events: list[str]) -> None:
    assert decode([wire]) == events
