"""Snapshots are bounded per organisation in bytes and inodes (issue 15, finding 8): many empty
files cost inodes, not blocks, and a snapshot past the quota is refused (409 naming the quota)
before anything is copied, leaving nothing behind and the sandbox running."""

from __future__ import annotations

import json

import httpx
import pytest

from tests._support import api
from tests.reliability.conftest import SpareServer

pytestmark = [pytest.mark.privileged]
SERVE_ARGS = ("--no-build-template", "--snapshot-quota-inodes", "5000")


def test_snapshot_quota_counts_inodes(spare: SpareServer) -> None:
    with (
        spare(*SERVE_ARGS) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as http,
    ):
        if not http.get("/v1/health").json().get("checkpoint"):
            pytest.skip("no checkpointing runtime on this host")
        sid = api.create(http)["id"]
        try:
            api.run(http, sid, "mkdir /root/many && cd /root/many && seq 8000 | xargs touch")
            r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "many"})
            assert r.status_code == 409, r.text
            assert "snapshot quota" in r.json()["message"] and "5000" in r.json()["message"], r.text
            assert list((server.data_dir / "snapshots").iterdir()) == []
            assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"

            api.run(http, sid, "rm -rf /root/many; mkdir /root/some; cd /root/some && seq 1000 | xargs touch")
            r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "some"})
            assert r.status_code == 201, r.text
            snapshot = r.json()
            directory = server.data_dir / "snapshots" / snapshot["id"]
            inodes = json.loads((directory / "manifest.json").read_text())["inodes"]
            assert 1000 < inodes < 5000, inodes
            # the next one would pass the quota together with the first
            api.run(http, sid, "mkdir /root/more && cd /root/more && seq 3500 | xargs touch")
            r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "more"})
            assert r.status_code == 409, r.text
            assert [p.name for p in (server.data_dir / "snapshots").iterdir()] == [snapshot["id"]]
            assert api.run(http, sid, "echo ok")["stdout"] == "ok\n"
            assert http.delete(f"/v1/snapshot/{snapshot['id']}").status_code == 204
        finally:
            api.delete(http, sid)
