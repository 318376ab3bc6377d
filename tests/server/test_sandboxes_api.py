"""The lifecycle endpoints on the wire: exact paths, status codes, bodies and error shapes."""

from __future__ import annotations

import datetime as dt
import re
import socket
import time

import httpx
import pytest

from tests._support import api
from tests._support.server import ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


def test_create_get_list_delete_round_trip(http: httpx.Client) -> None:
    r = http.post(
        "/v1/sandbox",
        json={
            "template_name": "system/debian:bookworm",
            "vcpu": 1,
            "memory": 1024,
            "timeout": 300,
            "auto_pause": False,
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    for key in (
        "id",
        "template_id",
        "vcpu",
        "memory",
        "disk",
        "timeout",
        "state",
        "auto_pause",
        "created_at",
    ):
        assert key in body
    assert (body["vcpu"], body["memory"], body["timeout"], body["state"]) == (1, 1024, 300, "running")
    assert body["network_policy"] is None
    dt.datetime.fromisoformat(body["created_at"])
    sid = body["id"]

    for path in (f"/v1/sandbox/{sid}/", f"/v1/sandbox/{sid}"):
        got = http.get(path)
        assert got.status_code == 200
        assert got.json()["state"] == "running"
        assert "network_policy" not in got.json()

    listed = http.get("/v1/sandboxes", params={"state": "running", "order-by": "desc", "page-size": 100})
    assert listed.status_code == 200
    assert sid in {item["id"] for item in listed.json()["items"]}
    assert listed.json()["total_items"] >= 1

    assert api.run(http, sid, "echo hi") == {"exit_code": 0, "stdout": "hi\n", "stderr": ""}
    api.delete(http, sid)
    missing = http.get(f"/v1/sandbox/{sid}/")
    assert missing.status_code == 404
    assert missing.json()["message"]
    assert http.delete(f"/v1/sandbox/{sid}/").status_code == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [("vcpu", 9), ("vcpu", 0), ("memory", 513), ("memory", 511), ("memory", 8194), ("timeout", 0),
     ("timeout", 28801), ("template_name", ""), ("template_name", "x" * 65), ("vcpu", "2"),
     ("auto_pause", "yes")],
)  # fmt: skip
def test_invalid_create_fields_get_400_naming_the_field(
    http: httpx.Client, field: str, value: object
) -> None:
    r = http.post("/v1/sandbox", json={field: value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["message"]
    assert [e["field"] for e in body["errors"]] == [field]


def test_unknown_template_is_400_on_template_name(http: httpx.Client) -> None:
    r = http.post("/v1/sandbox", json={"template_name": "nope/never:1"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "template_name"


def test_unknown_field_and_bad_json_are_400(http: httpx.Client) -> None:
    assert http.post("/v1/sandbox", json={"cpus": 2}).json()["errors"][0]["field"] == "cpus"
    r = http.post("/v1/sandbox", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "JSON" in r.json()["message"]


def test_auth_is_required_and_checked(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/sandboxes"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).json()["message"] == "invalid API key"
    assert httpx.get(url, headers={"authorization": server.api_key}).status_code == 200
    assert httpx.get(url, headers={"leap0-authorization": server.api_key}).status_code == 200


def test_pause_then_exec_resumes(http: httpx.Client) -> None:
    sid = api.create(http)["id"]
    api.run(http, sid, "echo 1 > /tmp/counter")
    paused = http.post(f"/v1/sandbox/{sid}/pause")
    assert paused.status_code == 201
    assert paused.json()["state"] == "paused"
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "paused"
    again = http.post(f"/v1/sandbox/{sid}/pause")
    assert again.status_code == 409
    assert api.run(http, sid, "cat /tmp/counter")["stdout"] == "1\n"
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    api.delete(http, sid)


def test_stop_keeps_files_and_start_boots_again(http: httpx.Client) -> None:
    sid = api.create(http)["id"]
    api.run(http, sid, "echo kept > /root/file; sleep 1000 >/dev/null 2>&1 &")
    stopped = http.post(f"/v1/sandbox/{sid}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"
    assert http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": "true"}).status_code == 409
    assert http.post(f"/v1/sandbox/{sid}/stop").status_code == 409
    started = http.post(f"/v1/sandbox/{sid}/start")
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "running"
    result = api.run(http, sid, "cat /root/file; pgrep -c sleep || true")
    assert result["stdout"] == "kept\n0\n"  # the disk survived, the processes did not
    assert http.post(f"/v1/sandbox/{sid}/start").status_code == 409
    api.delete(http, sid)


def test_list_paging_and_validation(http: httpx.Client) -> None:
    ids = {api.create(http)["id"] for _ in range(3)}
    page1 = http.get("/v1/sandboxes", params={"page-size": 2, "page": 1, "order-by": "asc"}).json()
    page2 = http.get("/v1/sandboxes", params={"page-size": 2, "page": 2, "order-by": "asc"}).json()
    assert len(page1["items"]) == 2
    assert page1["total_items"] == page2["total_items"] >= 3
    assert ids <= {i["id"] for i in page1["items"] + page2["items"]} | {
        i["id"] for i in http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]
    }
    assert http.get("/v1/sandboxes", params={"page-size": 101}).status_code == 400
    assert http.get("/v1/sandboxes", params={"state": "bogus"}).status_code == 400
    for sid in ids:
        api.delete(http, sid)


def test_a_create_whose_client_hung_up_is_undone(http: httpx.Client, server: ServerProcess) -> None:
    """Nobody learns the id of a sandbox whose create's client went away before the answer (a
    client that gave up, or a cluster's API replica that died forwarding it): it is deleted,
    not left running until its timeout."""
    before = {i["id"] for i in http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]}
    body = b'{"timeout": 600}'
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/sandbox HTTP/1.1\r\nHost: atoll\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    # the create goes on without its client, then finds it gone and deletes what it made
    undone = re.compile(r"deleted sandbox (sbx\w+): its create's client went away")
    deadline = time.monotonic() + 60
    while not (found := undone.search(server.log_tail(400))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found, "the create never reported its client gone"
    # logged as the delete begins: gone once it is done (a gVisor sandbox takes a while)
    while http.get(f"/v1/sandbox/{found[1]}").status_code != 404 and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    assert http.get(f"/v1/sandbox/{found[1]}").status_code == 404
    after = {i["id"] for i in http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]}
    assert after <= before, after - before
