"""The exec agent's wire, host side (pure logic; tests/server and tests/security drive the real
agent in real sandboxes)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest

from atoll.runtime import agent
from atoll.runtime.spec import ExecRequest


def test_a_request_is_a_header_and_nul_terminated_fields() -> None:
    request = ExecRequest(argv=("/bin/sh", "-c", "echo hi"), env={"A": "1"}, cwd="/w", max_output_bytes=99)
    wire = agent.encode(request)
    assert wire[:4] == b"ATL1"
    (length,) = struct.unpack("<I", wire[4:8])
    assert wire[8:] == b"/w\x0099\x003\x00/bin/sh\x00-c\x00echo hi\x00A=1\x00"
    assert length == len(wire) - 8


def test_the_main_process_runs_under_the_agent() -> None:
    assert agent.init_args(None) == ["/.atoll/agent"]
    assert agent.init_args(("nginx", "-g", "daemon off;")) == [
        "/.atoll/agent",
        "--",
        "nginx",
        "-g",
        "daemon off;",
    ]


async def parse(
    reply: bytes, cap: int = 100, pace: int = 0, ack: Callable[[], None] = lambda: None
) -> tuple[int, bytes, bytes]:
    reader = asyncio.StreamReader()
    line, _, rest = reply.partition(b"\n")
    reader.feed_data(rest)
    reader.feed_eof()
    return await agent._result(reader, line + b"\n", cap, pace=pace, ack=ack)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"X 3 2 4\nhiwarn", (3, b"hi", b"warn")),
        (b"X 0 101 0\n" + b"a" * 101, (137, b"", b"")),  # beyond the output cap: refused whole
        (b"X 0 -1 0\n", (137, b"", b"")),
        (b"X 999 0 0\n", (137, b"", b"")),  # not an exit status
        (b"X 0 5 0\nab", (0, b"", b"")),  # cut short: the output is not trusted
        (b"garbage\n", (137, b"", b"")),
        (b"\n", (137, b"", b"")),  # the handler died before reporting
    ],
)
def test_replies_are_untrusted(reply: bytes, expected: tuple[int, bytes, bytes]) -> None:
    assert asyncio.run(parse(reply)) == expected


def test_paced_output_is_acknowledged_chunk_by_chunk() -> None:
    """gVisor: every chunk of at most ``pace`` bytes, of stdout and then of stderr, gets one ack."""
    acks: list[int] = []
    # each chunk starts with "+"; fillers (".") sent while an ack was awaited come before the next
    chunks = b"+oooooooo" + b"..+oooooooo" + b"+oooo" + b".+eee"
    result = asyncio.run(parse(b"X 0 20 3 +\n" + chunks, pace=8, ack=lambda: acks.append(1)))
    assert result == (0, b"o" * 20, b"eee")
    assert len(acks) == 3 + 1


def test_paced_output_of_an_agent_from_before_the_marks_is_read_as_it_was() -> None:
    """A sandbox started by an older Atoll keeps its agent: "X" with four fields, no marks."""
    acks: list[int] = []
    result = asyncio.run(parse(b"X 0 10 0\n" + b".+" + b"o" * 8, pace=8, ack=lambda: acks.append(1)))
    assert result == (0, b".+" + b"o" * 8, b"") and len(acks) == 2


def test_paced_output_without_its_chunk_mark_is_not_trusted() -> None:
    assert asyncio.run(parse(b"X 0 4 0 +\n" + b"oooo", pace=8)) == (0, b"", b"")
