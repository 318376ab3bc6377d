"""Tenants and auth: one organisation can neither see nor touch another's sandboxes, snapshots
and templates, nor route to them (404 exactly as for ids that do not exist: never a 403 or 409
that would leak existence); keys are stored hashed; /v1 needs a key; each key has a rate limit."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.server.ratelimit import RateLimiter
from tests._support import api
from tests._support.images import build_image
from tests._support.server import ServerProcess, spare_server

pytestmark = [pytest.mark.privileged]
MISSING_SANDBOX = "sbx0123456789abcdef"
MISSING_SNAPSHOT = "snp0123456789abcdef"
# request bodies that pass validation, so a refusal can only come from the ownership check
BODIES: dict[str, dict[str, Any]] = {
    "process/execute": {"json": {"command": "true"}},
    "snapshot/create": {"json": {"name": "tenant-probe"}},
    "presigned-url": {"json": {"port": 8080}},
    "filesystem/ls": {"json": {"path": "/"}},
    "filesystem/stat": {"json": {"path": "/"}},
    "filesystem/exists": {"json": {"path": "/"}},
    "filesystem/tree": {"json": {"path": "/"}},
    "filesystem/mkdir": {"json": {"path": "/tmp/probe"}},
    "filesystem/delete": {"json": {"path": "/tmp/probe"}},
    "filesystem/read-file": {"params": {"path": "/etc/hostname"}},
    "filesystem/write-file": {"params": {"path": "/tmp/probe"}, "content": b"x"},
    "pty": {"json": {"session_id": "probe", "cols": 80, "rows": 24}},
}


@pytest.fixture(scope="module")
def org_b(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client of a second organisation on the session server."""
    key = server.mint_key(f"org_b_{uuid.uuid4().hex[:8]}")
    with httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=60) as b:
        yield b


@pytest.fixture(scope="module")
def a_sandbox(server: ServerProcess) -> Iterator[str]:
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as http:
        sid = api.create(http)["id"]
        api.run(http, sid, "echo mine > /root/a.txt")
        yield sid
        http.delete(f"/v1/sandbox/{sid}/")


def openapi_operations(server: ServerProcess) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    suffix = path.split("}/", 1)[1] if "}/" in path else ""
    extra = next((v for k, v in BODIES.items() if suffix.startswith(k)), {}) if method != "GET" else {}
    return client.request(method, path, **extra)


def same_answer(a: httpx.Response, b: httpx.Response, *ids: str) -> bool:
    def norm(text: str) -> str:
        for i in ids:
            text = text.replace(i, "ID")
        return re.sub(r"(sbx|snp|tpl)[0-9a-zA-Z_-]+", "ID", text)

    return a.status_code == b.status_code and norm(a.text) == norm(b.text)


@pytest.mark.usefixtures("no_leaks")
def test_other_orgs_sandboxes_are_indistinguishable_from_missing(
    server: ServerProcess, http: httpx.Client, org_b: httpx.Client, a_sandbox: str
) -> None:
    checked = []
    for method, path in openapi_operations(server):
        if "{sandbox_id}" not in path:
            continue
        concrete = path.replace("{session_id}", "probe").replace("{presigned_id}", "probe")
        theirs = call(org_b, method, concrete.replace("{sandbox_id}", a_sandbox))
        missing = call(org_b, method, concrete.replace("{sandbox_id}", MISSING_SANDBOX))
        assert theirs.status_code not in (200, 201, 204, 403, 409), (method, path, theirs.text)
        assert same_answer(theirs, missing, a_sandbox, MISSING_SANDBOX), (
            method,
            path,
            theirs.text,
            missing.text,
        )
        checked.append((method, path, theirs.status_code))
    statuses = {s for _, _, s in checked}
    # 501: a service this server does not offer answers so before any lookup, for every id alike
    assert statuses <= {404, 400, 501}, checked
    assert len([c for c in checked if c[2] == 404]) >= 10, checked
    # B's list does not show it; A's sandbox is untouched by all of the above
    assert a_sandbox not in {
        i["id"] for i in org_b.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]
    }
    assert http.get(f"/v1/sandbox/{a_sandbox}/").json()["state"] == "running"
    assert api.run(http, a_sandbox, "cat /root/a.txt; ls /tmp/probe 2>&1 | head -1")["stdout"].startswith(
        "mine\n"
    )


@pytest.mark.usefixtures("no_leaks")
def test_other_orgs_sandboxes_cannot_be_routed_to(
    server: ServerProcess, org_b: httpx.Client, a_sandbox: str
) -> None:
    key = org_b.headers["authorization"]
    with httpx.Client(base_url=server.router_url, timeout=30, trust_env=False) as router:
        theirs = router.get("/", headers={"host": server.sandbox_host(a_sandbox, 8000), "authorization": key})
        missing = router.get(
            "/", headers={"host": server.sandbox_host(MISSING_SANDBOX, 8000), "authorization": key}
        )
    assert theirs.status_code == 404, theirs.text
    assert same_answer(theirs, missing, a_sandbox, MISSING_SANDBOX)


@pytest.mark.usefixtures("no_leaks")
def test_other_orgs_snapshots_are_invisible(http: httpx.Client, org_b: httpx.Client, a_sandbox: str) -> None:
    if not http.get("/v1/health").json()["checkpoint"]:
        pytest.skip("snapshots need a checkpointing runtime (runc + CRIU) on this host")
    name = f"a-only-{uuid.uuid4().hex[:6]}"
    r = http.post(f"/v1/sandbox/{a_sandbox}/snapshot/create", json={"name": name})
    assert r.status_code == 201, r.text
    snap = r.json()["id"]
    try:
        for method in ("GET", "DELETE"):
            theirs = org_b.request(method, f"/v1/snapshot/{snap}")
            missing = org_b.request(method, f"/v1/snapshot/{MISSING_SNAPSHOT}")
            assert theirs.status_code == 404 and same_answer(theirs, missing, snap, MISSING_SNAPSHOT)
        theirs = org_b.post("/v1/snapshot/restore", json={"snapshot_name": name})
        missing = org_b.post("/v1/snapshot/restore", json={"snapshot_name": "no-such-" + name})
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["message"].replace(name, "N") == missing.json()["message"].replace(
            "no-such-" + name, "N"
        )
        listed = org_b.get("/v1/snapshots", params={"page-size": 100}).json()
        assert snap not in {i["id"] for i in listed["items"]}
        assert http.get(f"/v1/snapshot/{snap}").status_code == 200  # still A's, untouched
    finally:
        http.delete(f"/v1/snapshot/{snap}")


@pytest.mark.usefixtures("no_leaks")
def test_other_orgs_templates_are_invisible(
    server: ServerProcess, http: httpx.Client, org_b: httpx.Client, tmp_path: Path
) -> None:
    imports = server.data_dir / "imports"
    imports.mkdir(exist_ok=True)
    archive = imports / f"tenant-{uuid.uuid4().hex[:6]}.tar"
    subprocess.run(["tar", "-C", build_image(tmp_path), "-cf", archive, "."], check=True)
    name = f"a-template-{uuid.uuid4().hex[:6]}"
    r = http.post("/v1/template", json={"name": name, "uri": f"oci-archive:{archive}"}, timeout=300)
    assert r.status_code == 201, r.text
    template = r.json()["id"]
    try:
        for method, extra in (("GET", {}), ("PATCH", {"json": {"name": "stolen"}}), ("DELETE", {})):
            theirs = org_b.request(method, f"/v1/template/{template}", **extra)
            missing = org_b.request(method, "/v1/template/tpl-no-such-template", **extra)
            assert theirs.status_code == 404 and same_answer(theirs, missing, template), (method, theirs.text)
        listed = org_b.get("/v1/templates").json()
        assert template not in {t["id"] for t in listed["items"]}
        theirs = org_b.post("/v1/sandbox", json={"template_name": name})
        missing = org_b.post("/v1/sandbox", json={"template_name": name + "-none"})
        assert theirs.status_code == 400, theirs.text
        assert theirs.text.replace(name, "N") == missing.text.replace(name + "-none", "N")
        assert http.get(f"/v1/template/{template}").json()["name"] == name  # A's, untouched
    finally:
        http.delete(f"/v1/template/{template}")
        archive.unlink(missing_ok=True)


def test_keys_are_stored_hashed(server: ServerProcess, org_b: httpx.Client) -> None:
    raw_keys = [server.api_key, org_b.headers["authorization"].removeprefix("Bearer ")]
    database = server.data_dir / "atoll.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT key_hash FROM api_keys").fetchall()
        dump = "\n".join(db.iterdump())
    hashes = {row[0] for row in rows}
    for raw in raw_keys:
        assert hashlib.sha256(raw.encode()).hexdigest() in hashes
        assert raw not in dump
    for path in server.data_dir.glob("atoll.db*"):  # the file itself, and its WAL/journal
        data = path.read_bytes()
        assert not any(raw.encode() in data for raw in raw_keys), path


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-key"},
        {"authorization": "Bearer"},
        {"leap0-authorization": "nope"},
    ],
    ids=["no-key", "wrong-key", "empty-bearer", "wrong-leap0-header"],
)
def test_every_v1_route_needs_a_key(server: ServerProcess, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as anonymous:
        for method, path in openapi_operations(server):
            if path in ("/v1/health", "/v1/ca.pem"):  # public: liveness, and the sandbox URLs' CA
                continue
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            r = anonymous.request(method, concrete)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert set(r.json()) == {"message"}, r.text


# rate limit ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerProcess]:
    """A server with the default rate limit (1000 requests per 60 s per key)."""
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-rl-", dir="/var/tmp"))
    proc = spare_server(data_dir, "--rate-limit", "1000", "--netns-pool-size", "0")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_rate_limit_per_key_answers_429_with_retry_after(limited_server: ServerProcess) -> None:
    other = limited_server.mint_key("org_rl_other")
    with httpx.Client(base_url=limited_server.base_url, headers=limited_server.headers, timeout=30) as a:
        statuses = [a.get("/v1/sandboxes").status_code for _ in range(1000)]
        assert statuses == [200] * 1000
        over = a.get("/v1/sandboxes")
        assert over.status_code == 429, over.text
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert set(over.json()) == {"message"}
        assert a.get("/v1/health").status_code == 200  # unauthenticated liveness is not counted
    with httpx.Client(base_url=limited_server.base_url, headers={"authorization": other}, timeout=30) as b:
        assert b.get("/v1/sandboxes").status_code == 200  # another key has its own budget
    with httpx.Client(base_url=limited_server.base_url, timeout=30) as anonymous:
        assert anonymous.get("/v1/sandboxes").status_code == 401


def test_rate_limiter_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=3, window=60, clock=lambda: now[0])
    assert [limiter.hit("k") for _ in range(3)] == [None, None, None]
    assert limiter.hit("k") == 60
    assert limiter.hit("other") is None
    now[0] = 45.5
    assert limiter.hit("k") == pytest.approx(14.5)
    now[0] = 60.0
    assert limiter.hit("k") is None  # a new window
    assert [limiter.hit("k") for _ in range(2)] == [None, None]
    assert limiter.hit("k") is not None
