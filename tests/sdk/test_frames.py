"""The framed event decoder: the same events however the body is cut, text decoded per stream
(a character split between frames kept whole), keepalives read past, a corrupt frame refused."""

from __future__ import annotations

import pytest

from atoll import MalformedResponseError
from atoll.sdk._frames import FRAME_HEADER, FrameDecoder
from atoll.sdk._process_models import ProcessEvent


def frame(kind: bytes, seq: int, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(kind, len(payload), seq) + payload


WIRE = b"".join(
    [
        frame(b"o", 1, b"caf\xc3"),  # "é" split between two stdout frames
        frame(b"k", 0),
        frame(b"e", 2, b"\xc3\xa9rr"),  # stderr has its own decoder: not joined with stdout's
        frame(b"o", 3, b"\xa9 \xff\n"),
        frame(b"t", 0),
        frame(b"x", 4, (-2).to_bytes(4, "little", signed=True)),
    ]
)
EXPECTED = [
    ProcessEvent(type="stdout", seq=1, data="caf"),
    ProcessEvent(type="stderr", seq=2, data="érr"),
    ProcessEvent(type="stdout", seq=3, data="é \ufffd\n"),
    ProcessEvent(type="truncated"),
    ProcessEvent(type="exit", seq=4, exit_code=-2),
]


def decode(chunks: list[bytes]) -> list[ProcessEvent]:
    decoder = FrameDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    decoder.close()
    return events


def test_whole_body() -> None:
    assert decode([WIRE]) == EXPECTED


def test_every_way_to_cut_the_body_in_three() -> None:
    for i in range(0, len(WIRE) + 1, 3):
        for j in range(i, len(WIRE) + 1):
            assert decode([WIRE[:i], WIRE[i:j], WIRE[j:]]) == EXPECTED, (i, j)


def test_a_frame_cut_short_at_the_end_is_left_out() -> None:
    assert decode([WIRE[:-3]]) == EXPECTED[:-1]


@pytest.mark.parametrize(
    "wire",
    [
        FRAME_HEADER.pack(b"?", 0, 1),  # unknown kind
        FRAME_HEADER.pack(b"o", 1 << 30, 1),  # a length no server sends
        frame(b"x", 1, b"\0\0"),  # an exit code is 4 bytes
    ],
)
def test_corrupt_frames_are_refused(wire: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        FrameDecoder().feed(wire)
