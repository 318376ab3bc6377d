"""Durable pause (checkpoint to disk), named snapshots, restore as independent forks.

Needs a checkpointing runtime (runc + CRIU >= 4.2, installed by `make test`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import atoll
from atoll.network.egress_trust import GUEST_BUNDLE, GUEST_CA
from tests._support import api, counter
from tests._support.server import INSTANCE, ServerProcess

pytestmark = [pytest.mark.privileged, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[atoll.Client]:
    with atoll.Client(api_key=server.api_key, base_url=server.base_url) as c:
        yield c


def require_checkpointing(http: httpx.Client, sid: str) -> None:
    paused = http.post(f"/v1/sandbox/{sid}/pause").json()
    assert paused["pause_kind"] == "checkpoint", (
        f"this server pauses by {paused['pause_kind']}: run the suite with runc and CRIU >= 4.2 "
        "(`make test` installs both)"
    )


def test_pause_checkpoints_to_disk_frees_the_host_and_resumes_in_place(http: httpx.Client) -> None:
    sid = api.create(http, memory=512)["id"]
    api.run(http, sid, counter.START)
    before = counter.read(http, sid)
    require_checkpointing(http, sid)
    # the processes, the cgroup and the root mount are gone from the host
    assert not Path(f"/sys/fs/cgroup/pids/atoll_{INSTANCE}/{sid}").exists()
    assert f"{sid}/rootfs" not in Path("/proc/self/mountinfo").read_text()
    time.sleep(1)
    after = counter.read(http, sid)  # resumes through process.execute
    assert before < after < before + 8, (before, after)  # continued, not restarted, not run on
    ticks = api.run(http, sid, "sleep 0.3; tail -n 3 /root/ticks.log")["stdout"].split()
    assert [int(t) for t in ticks] == list(range(int(ticks[0]), int(ticks[0]) + 3))  # the file is intact
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    api.delete(http, sid)


def test_listening_server_survives_pause_and_resume(http: httpx.Client) -> None:
    sid = api.create(http, memory=512)["id"]
    api.run(http, sid, "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 0.5")
    ip = api.sandbox_ip(http, sid)
    assert httpx.get(f"http://{ip}:8000/", timeout=10).status_code == 200
    require_checkpointing(http, sid)
    with socket.socket() as s:  # nothing answers while paused: the processes are on disk
        s.settimeout(1)
        assert s.connect_ex((ip, 8000)) != 0
    api.run(http, sid, "true")
    assert httpx.get(f"http://{ip}:8000/", timeout=10).status_code == 200
    api.delete(http, sid)


def test_snapshot_restores_into_independent_forks(
    client: atoll.Client, http: httpx.Client, server: ServerProcess
) -> None:
    source = client.sandboxes.create(memory_mib=512)
    source.process.execute(command=counter.START)
    source.process.execute(command="echo original > /root/shared")
    snapshot = source.create_snapshot(name=f"fork-{source.id}")
    assert snapshot.name == f"fork-{source.id}" and snapshot.id and snapshot.size_bytes > 0
    assert client.sandboxes.get(source.id).state == "running"
    forks = [client.snapshots.restore(snapshot_name=snapshot.name, timeout=100) for _ in range(2)]
    assert len({source.id, *(f.id for f in forks)}) == 3
    assert all(f.timeout == 100 and f.memory == 512 for f in forks)
    # each continues from the snapshot's in-memory counter, not from zero
    at_snapshot = int(source.process.execute(command=counter.READ).stdout)
    for fork in forks:
        value = int(fork.process.execute(command=counter.READ).stdout)
        assert value >= 1 and abs(value - at_snapshot) < 100
        assert fork.process.execute(command="cat /root/shared").stdout == "original\n"
    # writes in one are invisible in the others
    forks[0].process.execute(command="echo fork0 > /root/shared")
    assert source.process.execute(command="cat /root/shared").stdout == "original\n"
    assert forks[1].process.execute(command="cat /root/shared").stdout == "original\n"
    assert forks[0].process.execute(command="cat /root/shared").stdout == "fork0\n"
    # duplicates are refused; in use, it cannot be deleted; afterwards it can, and its disk is freed
    with pytest.raises(atoll.ConflictError):
        source.create_snapshot(name=snapshot.name)
    assert snapshot.name in [s.name for s in client.snapshots.list(query="fork-").items]
    with pytest.raises(atoll.ConflictError):
        client.snapshots.delete(snapshot)
    for sandbox in (*forks, source):
        sandbox.delete()
    snapshot_dir = server.data_dir / "snapshots" / snapshot.id  # the default snapshots_root
    assert snapshot_dir.is_dir(), sorted(p.name for p in snapshot_dir.parent.iterdir())
    client.snapshots.delete(snapshot)
    assert not snapshot_dir.exists()
    with pytest.raises(atoll.NotFoundError):
        client.snapshots.get(snapshot.id)


def _trusted(sandbox: atoll.Sandbox) -> tuple[str, int]:
    """The sandbox's egress CA certificate, and how many certificates its trust store holds."""
    out = sandbox.process.execute(command=f"cat /{GUEST_CA}; grep -c BEGIN /{GUEST_BUNDLE}").stdout
    certificate, count = out.rstrip("\n").rsplit("\n", 1)
    assert "BEGIN CERTIFICATE" in certificate, out
    return certificate, int(count)


def test_a_restore_keeps_the_snapshots_egress_ca(client: atoll.Client) -> None:
    """A policy that terminates TLS gives a sandbox a CA of its own; its processes restored from
    a snapshot's memory trust that CA only (Node reads NODE_EXTRA_CA_CERTS once), so a restore
    signs with it, unless the restore names a transform the CA may not sign for."""
    transform = {"domain": "api.example.test", "inject_headers": {"X-Key": "k"}}
    policy = {"mode": "allow-all", "transforms": [transform]}
    source = client.sandboxes.create(memory_mib=512, network_policy=policy)
    ca, count = _trusted(source)
    snapshot = source.create_snapshot(name=f"ca-{source.id}")
    same = client.snapshots.restore(snapshot_name=snapshot.name)
    assert _trusted(same) == (ca, count)  # the same CA, and no second one in the store
    other = {"mode": "allow-all", "transforms": [{**transform, "domain": "other.example.test"}]}
    elsewhere = client.snapshots.restore(snapshot_name=snapshot.name, network_policy=other)
    own_ca, own_count = _trusted(elsewhere)
    assert own_ca != ca and own_count == count  # a CA of its own, in the snapshot's one's place
    for sandbox in (same, elsewhere, source):
        sandbox.delete()
    client.snapshots.delete(snapshot.id)


def test_kill_sandbox_after_ends_the_source(client: atoll.Client) -> None:
    source = client.sandboxes.create(memory_mib=512)
    source.process.execute(command="echo kept > /root/data")
    snapshot = source.create_snapshot(kill_sandbox_after=True)
    assert snapshot.name  # generated
    with pytest.raises(atoll.NotFoundError):
        client.sandboxes.get(source.id)
    restored = client.snapshots.restore(snapshot_name=snapshot.name)
    assert restored.process.execute(command="cat /root/data").stdout == "kept\n"
    restored.delete()
    client.snapshots.delete(snapshot.id)


def test_auto_pause_at_timeout_then_resume_on_request(http: httpx.Client) -> None:
    sid = api.create(http, timeout=2, auto_pause=True, memory=512)["id"]
    api.run(http, sid, "echo 41 > /root/value")
    deadline = time.monotonic() + 30
    while http.get(f"/v1/sandbox/{sid}/").json()["state"] != "paused":
        assert time.monotonic() < deadline, "never auto-paused"
        time.sleep(0.2)
    assert http.get(f"/v1/sandbox/{sid}/").json()["pause_kind"] == "checkpoint"
    assert api.run(http, sid, "echo $(( $(cat /root/value) + 1 ))")["stdout"] == "42\n"
    assert http.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    api.delete(http, sid)


def test_snapshot_api_errors(http: httpx.Client) -> None:
    assert http.post("/v1/snapshot/restore", json={"snapshot_name": "no-such-snapshot"}).status_code == 404
    assert http.post("/v1/snapshot/restore", json={"snapshot_name": ""}).status_code == 400
    assert http.delete("/v1/snapshot/snpnope").status_code == 404
    assert http.post("/v1/sandbox/sbxnope/snapshot/create", json={}).status_code == 404
    listed = http.get("/v1/snapshots", params={"query": "", "page-size": 5})
    assert listed.status_code == 200 and {"items", "total_items"} <= set(listed.json())
