"""Services of the leap0 wire this server does not offer answer 501 naming the service (every
control-plane path the leap0 SDK uses for them), whatever the sandbox; any other unknown path
answers a JSON 404, never a framework body."""

from __future__ import annotations

import httpx
import pytest

from atoll.server.routes.unavailable import UNAVAILABLE
from tests._support import api

pytestmark = pytest.mark.privileged

# (method, path after /v1/sandbox/{id}/, service): every call of leap0 0.8.0's sandbox.py
# (mounts) to a service this server lacks (system/*, git, lsp and ssh are implemented)
CALLS = [
    ("POST", "mounts", "mounts"),
    ("PATCH", "mounts/mnt-1", "mounts"),
    ("DELETE", "mounts/mnt-1", "mounts"),
]  # fmt: skip


def test_every_listed_service_is_exercised() -> None:
    assert {service for *_, service in CALLS} == set(UNAVAILABLE.values())


def test_unavailable_services_answer_501(http: httpx.Client, no_leaks: None) -> None:
    sandbox = api.create(http, memory=512)["id"]
    try:
        for sandbox_id in (sandbox, "sbxnosuchsandbox"):  # the feature is absent either way
            for method, path, service in CALLS:
                r = http.request(method, f"/v1/sandbox/{sandbox_id}/{path}", json={"path": "/tmp"})
                assert r.status_code == 501, (method, path, r.status_code, r.text)
                assert r.json() == {"message": f"{service} is not available on this server"}, path
        # the sandbox itself is still there and fine
        assert http.get(f"/v1/sandbox/{sandbox}/").status_code == 200
    finally:
        api.delete(http, sandbox)


def test_unknown_paths_answer_json_404(http: httpx.Client) -> None:
    for method, path in (
        ("GET", "/v1/nothing-here"),
        ("POST", "/v1/sandbox/sbxnosuchsandbox/teleport"),
        ("GET", "/v1/sandbox/sbxnosuchsandbox/gitx/status"),  # not a service prefix
        ("GET", "/nothing"),
    ):
        r = http.request(method, path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/json" and set(r.json()) == {"message"}, r.text
    r = http.put("/v1/health")  # a known path, a wrong method: JSON too
    assert r.status_code == 405 and set(r.json()) == {"message"}
