"""Small raw-HTTP helpers for tests that exercise the wire directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/v1/sandbox", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    assert data["state"] == "running"
    return data


def run(http: httpx.Client, sandbox_id: str, command: str, **extra: Any) -> dict[str, Any]:
    r = http.post(f"/v1/sandbox/{sandbox_id}/process/execute", json={"command": command, **extra})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def delete(http: httpx.Client, sandbox_id: str) -> None:
    r = http.delete(f"/v1/sandbox/{sandbox_id}/")
    assert r.status_code == 204, r.text


def sandbox_ip(http: httpx.Client, sandbox_id: str) -> str:
    out = run(http, sandbox_id, "awk '$2 == \"sandbox\" {print $1}' /etc/hosts")["stdout"].strip()
    assert out.count(".") == 3, out
    return str(out)


def cgroup_file(instance: str, sandbox_id: str, *, v1: tuple[str, str], v2: str) -> Path:
    """A sandbox's cgroup control file on this host's hierarchy (v1 per controller, or v2)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        path = root / f"atoll_{instance}" / sandbox_id / v2
    else:
        path = root / v1[0] / f"atoll_{instance}" / sandbox_id / v1[1]
    assert path.exists(), f"{path} missing: the sandbox has no such cgroup"
    return path
