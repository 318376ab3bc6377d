"""deploy/kustomize renders (``kubectl kustomize``, offline) and every object it renders is valid
against Kubernetes' own schemas (kubernetes-validate, which ships them: no cluster is needed or
reached). What only a real cluster would show (scheduling, the node's privileges being enough,
hostPath mounts) is not exercised here: docs/cluster.md says so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from atoll.cli.main import app
from atoll.server.settings import Settings

KUSTOMIZE = Path(__file__).parents[2] / "deploy" / "kustomize"
TARGETS = ["base", "overlays/in-cluster-postgres"]


def render(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if "template" in d.get("spec", {})
    }


def _options(*path: str) -> set[str]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in getattr(param, "opts", [])} | {
        opt for param in command.params for opt in getattr(param, "secondary_opts", [])
    }


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_render_and_match_the_kubernetes_schemas(target: str) -> None:
    docs = render(target)
    kinds = sorted(d["kind"] for d in docs)
    assert {"Deployment", "DaemonSet", "Service", "ConfigMap", "Secret"} <= set(kinds)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any unknown or bad field


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_configure_only_settings_that_exist(target: str) -> None:
    """Every ATOLL_ variable is a setting, and every argument an option of the command it runs."""
    docs = render(target)
    known = {f"ATOLL_{name.upper()}" for name in Settings.model_fields}
    variables = [k for d in docs if d["kind"] in ("ConfigMap", "Secret") for k in d.get("data", {})]
    for pod in _pods(docs).values():
        variables += [e["name"] for c in pod["containers"] for e in c.get("env", [])]
    unknown = {v for v in variables if v.startswith("ATOLL_")} - known
    assert not unknown, f"not settings: {unknown}"
    commands = {"serve": _options("serve"), "node": _options("node", "run")}
    for name, pod in _pods(docs).items():
        for container in pod["containers"]:
            args = container.get("args", [])
            if not args or args[0] not in commands:
                continue
            given = {a for a in args if a.startswith("--")}
            assert given <= commands[args[0]], f"{name}: no such option {given - commands[args[0]]}"


def test_the_node_has_only_the_privileges_it_needs() -> None:
    pods = _pods(render("base"))
    api, node = pods["atoll-api"], pods["atoll-node"]
    for pod in (api, node):
        assert pod["automountServiceAccountToken"] is False  # Atoll calls no Kubernetes API
        for container in pod["containers"]:
            security = container["securityContext"]
            assert not security.get("privileged", False)
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health"
    assert not api.get("hostNetwork") and not api.get("hostPID")
    assert node["hostNetwork"] is True and not node.get("hostPID") and not node.get("hostIPC")
    assert "SYS_ADMIN" in node["containers"][0]["securityContext"]["capabilities"]["add"]
    # an API replica keeps no capability (test_replica_unprivileged.py runs one so) nor escalates
    api_security = api["containers"][0]["securityContext"]
    assert "add" not in api_security["capabilities"] and api_security["allowPrivilegeEscalation"] is False
    assert all(not v.get("hostPath") for v in api.get("volumes", [])), api["volumes"]
