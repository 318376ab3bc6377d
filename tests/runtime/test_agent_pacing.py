"""The paced link of gVisor sandboxes (``AgentLink`` with ``pace``, agent.c ``out_write``): the
host side of the protocol, against a peer socket that plays the agent byte for byte."""

from __future__ import annotations

import asyncio
import socket

from atoll.runtime.agent_processes import AgentLink

PACE = 16


async def _events_exchange(first: bytes, second: bytes) -> tuple[list[bytes], bytes, bytes]:
    """The agent's side sends ``first`` (the reply and one event's header, one chunk), then, once
    acknowledged, ``second``; returns the two lines read, the ack and the event's 20 bytes."""
    ours, agent = socket.socketpair()
    agent.settimeout(5)
    link = AgentLink(ours, pace=PACE)
    try:
        await link.send([b"events", b"1", b"0", b"1"])
        agent.recv(4096)  # the request
        agent.sendall(first)
        lines = [await asyncio.wait_for(link.readline(), 5), await asyncio.wait_for(link.readline(), 5)]
        ack = agent.recv(16)
        agent.sendall(second)
        data = await asyncio.wait_for(link.readexactly(20), 5)
        return lines, ack, data
    finally:
        link.close()
        agent.close()


def test_fillers_are_skipped_and_acks_fall_on_chunk_ends() -> None:
    # chunk 1: the mark and 15 counted bytes, then fillers while the "A" is awaited; chunk 2
    # (after the fillers already sent): its mark, then the rest of the payload
    lines, ack, data = asyncio.run(_events_exchange(b"+R\nV 1 o 20\n0123" + b"....", b"+456789abcdefghij"))
    assert lines == [b"R", b"V 1 o 20"]
    assert ack == b"A"  # after exactly PACE counted bytes, and before the fillers were read
    assert data == b"0123456789abcdefghij"  # no filler, no mark in the data


def test_an_unpaced_reply_line_is_read_as_is() -> None:
    async def go() -> bytes:
        ours, agent = socket.socketpair()
        link = AgentLink(ours, pace=PACE)
        try:
            await link.send([b"signal", b"1", b"9"])
            agent.sendall(b"E 3 pid no such process\n")  # reply() lines have no mark
            return await asyncio.wait_for(link.readline(), 5)
        finally:
            link.close()
            agent.close()

    assert asyncio.run(go()) == b"E 3 pid no such process"


def test_an_agent_from_before_the_marks_is_read_as_it_was() -> None:
    """A sandbox started by an older Atoll keeps its agent: chunks without marks, no fillers;
    data that happens to start a chunk with "." or "+" is data."""
    # 16 bytes without a mark: one chunk; then data that starts like a filler and a mark
    lines, ack, data = asyncio.run(_events_exchange(b"R\nV 1 o 20\n01234", b".+6789abcdefghij"))
    assert lines == [b"R", b"V 1 o 20"] and ack == b"A"
    assert data == b"01234.+6789abcdefghij"[:20]
