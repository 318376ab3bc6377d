"""What a snapshot costs the host, reported honestly: ``size_bytes`` from the blocks its copy
uses (not the files' apparent sizes) and ``inodes`` beside it (issue 15: 200,000 empty files
used 200,231 inodes but reported 184 KB and nothing else)."""

from __future__ import annotations

import httpx
import pytest

from tests._support import api

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]

FILES = 3000


def test_snapshot_reports_blocks_used_and_inodes(http: httpx.Client) -> None:
    if not http.get("/v1/health").json().get("checkpoint"):
        pytest.skip("snapshots need a checkpointing runtime on this host")
    sid = api.create(http)["id"]
    try:
        # one byte each: 3,000 bytes of content, but a block and an inode apiece in the copy
        api.run(
            http,
            sid,
            f"mkdir /root/many && cd /root/many && seq {FILES} | xargs -n 500 sh -c "
            "'for f; do printf x > $f; done' _",
            timeout=120,
        )
        r = http.post(f"/v1/sandbox/{sid}/snapshot/create", json={"name": "many-files"})
        assert r.status_code == 201, r.text
        snapshot = r.json()
        assert snapshot["inodes"] >= FILES, snapshot
        assert snapshot["size_bytes"] >= FILES * 4096, snapshot  # blocks, not 3,000 apparent bytes
        listed = {s["id"]: s for s in http.get("/v1/snapshots").json()["items"]}
        assert listed[snapshot["id"]]["inodes"] == snapshot["inodes"]
        assert listed[snapshot["id"]]["size_bytes"] == snapshot["size_bytes"]
        assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
        assert http.delete(f"/v1/snapshot/{snapshot['id']}").status_code == 204
    finally:
        api.delete(http, sid)
