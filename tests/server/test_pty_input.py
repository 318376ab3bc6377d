"""Bad PTY session input answers 400 naming the field (issue 16: a NUL would be cut off on its
way into the sandbox, so ``/tmp\\0/etc`` must not quietly become ``/tmp``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http)["id"]
        yield sid
        api.delete(http, sid)


@pytest.mark.parametrize("cwd", ["/tmp\x00/etc", "\x00", "/tmp/\ud800"])
def test_a_cwd_that_cannot_reach_the_sandbox_is_400(http: httpx.Client, sandbox: str, cwd: str) -> None:
    body = json.dumps({"id": "bad", "cwd": cwd})  # ASCII: a lone surrogate as its JSON escape
    r = http.post(f"/v1/sandbox/{sandbox}/pty", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["cwd"], r.text
    assert all(s["id"] != "bad" for s in http.get(f"/v1/sandbox/{sandbox}/pty").json()["items"])


def test_a_good_cwd_still_works(http: httpx.Client, sandbox: str) -> None:
    r = http.post(f"/v1/sandbox/{sandbox}/pty", json={"id": "good", "cwd": "/tmp", "lazy_start": True})
    assert r.status_code == 201, r.text
    assert r.json()["cwd"] == "/tmp"
    assert http.delete(f"/v1/sandbox/{sandbox}/pty/good").status_code == 204
