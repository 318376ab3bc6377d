"""What the service suites share: the server's CA (sandbox URLs are reached over https, as the
leap0 SDK does) and one sandbox of a service's template per module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests._support.server import ServerProcess

TEMPLATES_DIR = Path("/var/lib/atoll/templates")


@pytest.fixture(scope="module")
def ca_file(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    response = httpx.get(f"{server.base_url}/v1/ca.pem", timeout=30)
    assert response.status_code == 200, response.text
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(response.content)
    return path


def template_present(slug: str) -> bool:
    return (TEMPLATES_DIR / slug / "template.json").exists()


@contextmanager
def service_sandbox(server: ServerProcess, template: str, slug: str) -> Iterator[str]:
    """A sandbox of ``template`` (2 vCPUs, 2 GiB), deleted afterwards."""
    assert template_present(slug), f"make test builds {template} before the tests"
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
        r = http.post("/v1/sandbox", json={"template_name": template, "memory": 2048, "vcpu": 2})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        try:
            yield sid
        finally:
            http.delete(f"/v1/sandbox/{sid}/")
