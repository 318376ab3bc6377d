"""The framed binary form of process event streams (``Accept: application/octet-stream``, an
Atoll extension): the output's bytes exactly, the same events, seqs and exit as SSE, SSE still
the default, and the SDK reading it (a character split between two events kept whole, a big
output intact). Real server, real sandbox."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

import atoll
from atoll.sdk._frames import FRAME_HEADER, FRAMES_MEDIA_TYPE
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

FRAMES = {"accept": FRAMES_MEDIA_TYPE}
# invalid UTF-8 (\377) on stdout, a line on stderr, then an exit code
MIXED = r"printf 'a\377b\n'; sleep 0.1; echo err >&2; sleep 0.1; printf 'c\n'; exit 3"


def frames(body: bytes) -> list[tuple[bytes, int, bytes]]:
    """(kind, seq, payload) of each frame of a whole body, checking the framing is exact."""
    out = []
    at = 0
    while at < len(body):
        kind, length, seq = FRAME_HEADER.unpack_from(body, at)
        at += FRAME_HEADER.size
        out.append((kind, seq, body[at : at + length]))
        at += length
    assert at == len(body)
    return out


def test_execute_stream_frames_carry_the_bytes_exactly(http: httpx.Client, sandbox: str) -> None:
    r = http.post(f"/v1/sandbox/{sandbox}/process/execute/stream", json={"command": MIXED}, headers=FRAMES)
    assert r.status_code == 200 and r.headers["content-type"] == FRAMES_MEDIA_TYPE
    got = frames(r.content)
    assert b"".join(p for k, _, p in got if k == b"o") == b"a\xffb\nc\n"
    assert b"".join(p for k, _, p in got if k == b"e") == b"err\n"
    kinds = [k for k, _, _ in got]
    assert kinds[-1] == b"x" and kinds.count(b"x") == 1
    assert int.from_bytes(got[-1][2], "little", signed=True) == 3
    seqs = [s for _, s, _ in got]
    assert seqs == list(range(1, len(got) + 1))


def test_sse_stays_the_default(http: httpx.Client, sandbox: str) -> None:
    for headers in ({}, {"accept": "text/event-stream"}, {"accept": "*/*"}):
        r = http.post(
            f"/v1/sandbox/{sandbox}/process/execute/stream", json={"command": "echo hi"}, headers=headers
        )
        assert r.headers["content-type"].startswith("text/event-stream"), headers
        assert b'"data":"hi\\n"' in r.content and r.content.rstrip().endswith(b'"exit_code":0}')


def test_events_endpoint_frames_since_and_unknown_pid(http: httpx.Client, sandbox: str) -> None:
    r = http.post(f"/v1/sandbox/{sandbox}/process/start", json={"command": MIXED})
    pid = r.json()["pid"]
    url = f"/v1/sandbox/{sandbox}/process/{pid}/events"
    whole = frames(http.get(url, headers=FRAMES).content)
    assert [k for k, _, _ in whole][-1] == b"x"
    later = frames(http.get(url, params={"since": 1}, headers=FRAMES).content)
    assert later == whole[1:]
    sse = http.get(url).text  # the same events, as SSE
    assert sse.count("data: ") == len(whole)
    missing = http.get(f"/v1/sandbox/{sandbox}/process/999999/events", headers=FRAMES)
    assert missing.status_code == 404 and "message" in missing.json()


@pytest.fixture(scope="module")
def sdk_sandbox(server: ServerProcess, sandbox: str) -> Iterator[atoll.Sandbox]:
    with atoll.Client(
        api_key=server.api_key, base_url=server.base_url, sandbox_domain="sbx.localhost:1"
    ) as client:
        yield client.sandboxes.get(sandbox)


def test_sdk_reads_frames_and_keeps_a_split_character_whole(sdk_sandbox: atoll.Sandbox) -> None:
    # "é" is \303\251: its two bytes come as two events (the sleep), the SDK joins them
    chunks: list[str] = []
    result = sdk_sandbox.process.execute(
        command=r"printf 'caf\303'; sleep 0.2; printf '\251 \377\n'; exit 2", on_stdout=chunks.append
    )
    assert len(chunks) >= 2 and result.exit_code == 2
    assert "".join(chunks) == result.stdout == "café \ufffd\n"


def test_sdk_big_output_arrives_intact(sdk_sandbox: atoll.Sandbox) -> None:
    size = 32 << 20
    digest = hashlib.sha256()
    seen = 0

    def take(text: str) -> None:
        nonlocal seen
        seen += len(text)
        digest.update(text.encode())

    result = sdk_sandbox.process.execute(command=f"seq 100000000 | head -c {size}", on_stdout=take)
    assert result.exit_code == 0 and seen == size == len(result.stdout)
    expected = "".join(f"{i}\n" for i in range(1, 5_000_000)).encode()[:size]
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
