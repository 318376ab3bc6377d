"""Output a streaming reader has not taken yet extends the newest event (agent.c ``extends_last``):
a reader that lags behind a fast writer gets fewer, bigger events (per-event costs do not cap the
throughput), with seqs still counting 1, 2, 3... and every byte exactly once. Real server, real
sandbox, on the backend of the run."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx
import pytest

from atoll.sdk._sse import SSEDecoder

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

SIZE = 4 << 20


def test_a_lagging_reader_gets_big_events_and_every_byte_once(http: httpx.Client, sandbox: str) -> None:
    body = {"command": f"yes | head -c {SIZE}", "timeout": 120}
    got: list[dict[str, Any]] = []
    decoder = SSEDecoder()
    with http.stream("POST", f"/v1/sandbox/{sandbox}/process/execute/stream", json=body) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_raw():
            if not got:  # the client lags: the writer goes on into the ring meanwhile
                time.sleep(1.0)
            got += [json.loads(data) for data in decoder.feed(chunk)]
    assert got[-1] == {"type": "exit", "seq": len(got), "exit_code": 0}
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))
    out = [e["data"] for e in got if e["type"] == "stdout"]
    assert "".join(out) == "y\n" * (SIZE // 2)
    # one event per pipe read would be 4-8 KiB each (`head` writes 4 KiB at a time); merged
    # while unread, up to 64 KiB
    assert statistics.median(len(d) for d in out) >= 32 << 10, [len(d) for d in out][:20]
