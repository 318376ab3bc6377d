"""The routes' response models keep the wire as it was: what a route's dict builder makes, passed
through its model as FastAPI does (validated, then dumped with ``exclude_unset``), comes out as
the same JSON, byte for byte (same keys, same order, same number types)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from atoll._policy import NetworkPolicy
from atoll.runtime.files import FileInfo
from atoll.server import response_models as rm
from atoll.server import responses
from atoll.server.metrics import Sample
from atoll.server.pty import PtySession
from atoll.server.routes.templates import system_body, template_body
from atoll.server.schemas import list_item, sandbox_body, snapshot_body
from atoll.store.models import SandboxRow, SnapshotRow, TemplateRow
from atoll.templates.registry import Template

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
POLICY = NetworkPolicy.model_validate(
    {"mode": "custom", "allow_domains": ["a.example"], "transforms": [{"domain": "t.example"}]}
)


def _sandbox_row(**values: Any) -> SandboxRow:
    return SandboxRow(
        id="sbx1", org_id="o", template_id="tpl", template_name="system/debian:bookworm", runtime="runc",
        vcpu=1, memory=256, disk=1024, timeout=600, state="running", state_reason=None, auto_pause=False,
        pause_kind=None, created_at=NOW, timeout_at=NOW, launch_time=NOW, state_change_time=NOW,
        env_vars={}, **values,
    )  # fmt: skip


def _sample(cpu_used_pct: float = 0.0) -> Sample:
    return Sample(
        timestamp="t", cpu_count=2, cpu_used_pct=cpu_used_pct, mem_used_mib=100.0, mem_total_mib=256.0,
        disk_used_mib=1.0, disk_total_mib=1024.0, net_rx_bytes=10, net_tx_bytes=20, pids=3,
    )  # fmt: skip


CASES: list[tuple[type[BaseModel], Any]] = [
    (responses.SandboxResponse, sandbox_body(_sandbox_row(network_policy=POLICY), with_policy=True)),
    (responses.SandboxResponse, sandbox_body(_sandbox_row(network_policy=None), with_policy=True)),
    (responses.SandboxResponse, sandbox_body(_sandbox_row(network_policy=POLICY), with_policy=False)),
    (responses.SandboxListItem, list_item(_sandbox_row())),
    (
        responses.SnapshotResponse,
        snapshot_body(
            SnapshotRow(
                id="snp",
                name="n",
                template_id="t",
                template_name="tn",
                source_sandbox_id="sbx1",
                vcpu=1,
                memory=256,
                disk=1024,
                state="ready",
                size_bytes=4096,
                inodes=None,
                network_policy=POLICY,
                created_at=NOW,
            )
        ),
    ),
    (rm.FileEntry, FileInfo("a", "/a", False, 3, "644", 5, "root", "root", False).to_dict()),
    (rm.FileEntry, FileInfo("l", "/l", False, 3, "777", 5, "root", "root", True, "/a").to_dict()),
    (
        rm.Tree,
        {"items": [{"name": "d", "type": "directory", "children": [{"name": "f", "type": "file"}]}]},
    ),
    (
        rm.EditFilesResult,
        {"items": [{"file": "a", "success": True}, {"file": "b", "success": False, "error": "x"}]},
    ),
    (rm.GrepMatches, {"items": [{"path": "/a", "line": 3, "content": "hit"}]}),
    (
        rm.ProcessInfo,
        {"pid": 7, "command": "sleep 1", "cwd": "/", "tag": None, "started_at": "t", "running": True},
    ),
    (
        rm.ProcessInfo,
        {
            "pid": 7,
            "command": "x",
            "cwd": None,
            "tag": "t",
            "started_at": "t",
            "running": False,
            "exit_code": 0,
            "ended_at": "t",
        },
    ),
    (rm.PtySession, PtySession("pty1", "sbx1", "/root", {"A": "b"}, 80, 24, False).info()),
    (rm.TemplateInfo, system_body(Template(id="tpl", name="system/debian:bookworm", created_at="c"))),
    (
        rm.TemplateInfo,
        template_body(
            TemplateRow(
                id="tpl2",
                org_id="o",
                name="mine",
                uri="docker://x",
                state="importing",
                digest=None,
                image_config=None,
                created_at=NOW,
            )
        ),
    ),
    (rm.MetricsSample, _sample(cpu_used_pct=12.5).wire()),
    (rm.MetricsSample, {**_sample().wire(), "cpu_used_pct": 0}),  # an int where a float may be
    (
        rm.SandboxNetwork,
        {"id": "s", "state": "running", "network_policy": {"mode": "allow-all"}, "attached": False},
    ),
    (
        rm.Health,
        {
            "status": "ok",
            "runtime": "runc",
            "checkpoint": True,
            "userns": False,
            "network_pool_ready": 2,
            "warm_pool_ready": 0,
            "disk_pool_ready": 0,
            "capacity": {"vcpu_budget": 4, "vcpu_used": 0, "memory_mib_budget": 8, "memory_mib_used": 0},
            "templates_building": {"system/x": {"progress": 0.5, "phase": "pull"}},
            "sandbox_url": {"scheme": "https", "domain": "sbx.localhost:7701", "ca": "/v1/ca.pem"},
            "node": {"id": "later"},  # a key a model does not name yet is kept, after the others
        },
    ),
    (rm.GitCommit, {"sha": None, "result": {"output": "", "exit_code": 1}}),
]


@pytest.mark.parametrize(
    ("model", "body"), CASES, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(CASES)]
)
def test_a_model_keeps_the_dict_byte_for_byte(model: type[BaseModel], body: Any) -> None:
    app = FastAPI()

    @app.get("/plain")
    def plain() -> Any:
        return body

    @app.get("/modelled", **rm.answers(model))
    def modelled() -> Any:
        return body

    client = TestClient(app)
    before = client.get("/plain").content
    assert client.get("/modelled").content == before
    assert json.loads(before) == json.loads(json.dumps(body))
