"""The code interpreter end to end: a real server, a real sandbox from
``system/code-interpreter:v0.1.0``, reached over TLS through the router by the unchanged public
leap0 0.8.0 SDK (``leap0_code_interpreter.py`` runs it under Python 3.12).

One sandbox serves the whole module: isolation between contexts is tested inside it, and
isolation between sandboxes is the security suite's business."""

from __future__ import annotations

import itertools
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._support.server import SANDBOX_DOMAIN, ServerProcess
from tests.services.conftest import service_sandbox, template_present

pytestmark = [pytest.mark.privileged, pytest.mark.conformance]

ROOT = Path(__file__).resolve().parents[2]
LEAP0_PYTHON = ROOT / ".venv-leap0" / "bin" / "python"
SCRIPT = Path(__file__).with_name("leap0_code_interpreter.py")
TEMPLATE = "system/code-interpreter:v0.1.0"
SLUG = "system--code-interpreter@v0.1.0"


@pytest.fixture(scope="module")
def sandbox_id(server: ServerProcess) -> Iterator[str]:
    with service_sandbox(server, TEMPLATE, SLUG) as sid:
        yield sid


def run_leap0(server: ServerProcess, ca_file: Path, check: str, sid: str = "") -> Any:
    assert LEAP0_PYTHON.exists(), "run `make test` (it creates .venv-leap0 with leap0==0.8.0)"
    done = subprocess.run(
        [str(LEAP0_PYTHON), str(SCRIPT), server.base_url, server.api_key,
         f"{SANDBOX_DOMAIN}:{server.router_port}", check, sid],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SSL_CERT_FILE": str(ca_file)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_a_value_survives_between_calls_and_output_streams(
    server: ServerProcess, ca_file: Path, sandbox_id: str
) -> None:
    seen = run_leap0(server, ca_file, "basics", sandbox_id)
    assert seen["health"] is True
    assert seen["first_context"], seen
    assert seen["main_text"] == "2"
    first, second = seen["execution_count"]
    assert second == first + 1, seen["execution_count"]
    stream = seen["stream"]
    kinds = [e["type"] for e in stream]
    assert kinds[-1] == "exit" and stream[-1]["code"] == 0, stream
    ticks = [e for e in stream if e["type"] == "stdout" and "tick" in e["data"]]
    assert "".join(e["data"] for e in ticks).count("tick") == 4, stream
    assert len(ticks) == 4, f"each print should arrive as its own event: {stream}"
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(ticks)]
    # printed 0.3 s apart: streamed events arrive spread out, a buffered reply all at once
    assert all(gap > 0.15 for gap in gaps), gaps


def test_contexts_share_state_within_and_not_across(
    server: ServerProcess, ca_file: Path, sandbox_id: str
) -> None:
    seen = run_leap0(server, ca_file, "contexts", sandbox_id)
    context_id, language, cwd = seen["a"]
    assert (language, cwd) == ("python", "/home/user")
    assert seen["b_cwd"] == "/tmp"
    assert seen["same"] == "42"
    assert seen["other"] is True, "a variable of one context is visible in another"
    assert seen["cwd_in_b"] == "'/tmp'"
    assert context_id in seen["listed"] and seen["got"] == context_id
    assert seen["after_delete"]["status"] == 404, seen["after_delete"]
    assert context_id in seen["listed_after"] and len(seen["listed_after"]) == len(seen["listed"]) - 1


def test_rich_outputs_errors_logs_and_env(server: ServerProcess, ca_file: Path, sandbox_id: str) -> None:
    seen = run_leap0(server, ca_file, "rich", sandbox_id)
    assert seen["plot_error"] is None
    assert seen["png_sizes"] == [[400, 300]], seen["png_sizes"]
    assert seen["frame_html"] and "<table" in seen["frame_html"][0], seen["frame_html"]
    assert "a" in (seen["frame_text"] or "") and "b" in (seen["frame_text"] or "")
    assert seen["error"]["name"] == "ZeroDivisionError", seen["error"]
    assert "division by zero" in seen["error"]["value"]
    assert "ZeroDivisionError" in seen["error"]["traceback"] and "\x1b[" not in seen["error"]["traceback"]
    assert "".join(seen["logs"]["stdout"]) == "hello\n", seen["logs"]
    assert "".join(seen["logs"]["stderr"]) == "oops\n", seen["logs"]
    assert seen["env"] == "'seen'"


def test_a_timeout_interrupts_and_a_dead_kernel_comes_back(
    server: ServerProcess, ca_file: Path, sandbox_id: str
) -> None:
    seen = run_leap0(server, ca_file, "timeout", sandbox_id)
    assert seen["error"], seen
    assert seen["took_s"] < 10, seen
    assert seen["after"] == "'still here'", "the context must stay usable after a timeout"
    assert seen["died"], seen
    assert seen["revived"] == "2"


def test_typescript(server: ServerProcess, ca_file: Path, sandbox_id: str) -> None:
    seen = run_leap0(server, ca_file, "typescript", sandbox_id)
    assert seen["main_text"] == "42"
    assert seen["context"] == "42"
    assert "".join(seen["stdout"]) == "from node\n", seen["stdout"]
    assert seen["error"] == "TypeError"


def test_bad_input_is_refused_clearly(server: ServerProcess, ca_file: Path, sandbox_id: str) -> None:
    seen = run_leap0(server, ca_file, "bad_input", sandbox_id)
    assert seen["language"]["status"] == 400, seen["language"]
    body = json.loads(seen["language"]["body"])
    assert [e["field"] for e in body["errors"]] == ["language"], body
    assert seen["context"]["status"] == 404, seen["context"]
    assert seen["get_context"]["status"] == 404, seen["get_context"]


def test_without_a_key_the_interpreter_is_never_reached(
    server: ServerProcess, ca_file: Path, sandbox_id: str
) -> None:
    url = f"https://{sandbox_id}.{SANDBOX_DOMAIN}:{server.router_port}"
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(ca_file)), timeout=60, trust_env=False
    ) as anonymous:
        r = anonymous.post(f"{url}/execute", json={"code": "open('/tmp/reached', 'w').write('x')"})
        assert r.status_code == 401, r.text
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as http:
        done = http.post(
            f"/v1/sandbox/{sandbox_id}/process/execute", json={"command": "test -e /tmp/reached"}
        )
        assert done.json()["exit_code"] == 1, "the unauthenticated request ran code"


def test_a_fresh_sandbox_answers_right_after_its_create(server: ServerProcess, ca_file: Path) -> None:
    assert template_present(SLUG)
    seen = run_leap0(server, ca_file, "fresh")
    assert seen["main_text"] == "2", seen


def test_the_atoll_sdk_and_cli_reach_it_with_no_tls_setup(server: ServerProcess, sandbox_id: str) -> None:
    """The README's example: the SDK learns the scheme and the CA from the server itself."""
    from atoll import Client

    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    sandbox_domain = f"{SANDBOX_DOMAIN}:{server.router_port}"
    with Client(api_key=server.api_key, base_url=server.base_url, sandbox_domain=sandbox_domain) as client:
        sandbox = client.sandboxes.get(sandbox_id)
        ci = sandbox.code_interpreter
        assert ci.health() is True
        ci.execute("import math; r = 2")
        assert ci.execute("round(math.pi * r ** 2, 3)").main_text == "12.566"
        events = list(ci.execute_stream("for i in range(3): print(i)"))
        assert [e.type for e in events][-1] == "exit"
        assert "".join(e.data for e in events if e.type == "stdout") == "0\n1\n2\n"
    done = subprocess.run(
        [sys.executable, "-m", "atoll.cli.main", "sandbox", "run-code", sandbox_id, "6 * 7"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **env,
            "ATOLL_API_KEY": server.api_key,
            "ATOLL_BASE_URL": server.base_url,
            "ATOLL_SANDBOX_DOMAIN": sandbox_domain,
        },
    )
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr[-2000:]


def interpreter(server: ServerProcess, ca_file: Path, sid: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"https://{sid}.{SANDBOX_DOMAIN}:{server.router_port}",
        headers=server.headers,
        verify=ssl.create_default_context(cafile=str(ca_file)),
        timeout=300,
        trust_env=False,
    )


def run_cell(client: httpx.Client, code: str, context_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, **({"context_id": context_id} if context_id else {})}
    r = client.post("/execute", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    assert result.get("error") is None, result["error"]
    return result


def test_variables_survive_a_pause_and_a_snapshot(
    server: ServerProcess, ca_file: Path, sandbox_id: str, http: httpx.Client
) -> None:
    with interpreter(server, ca_file, sandbox_id) as ci:
        context_id = ci.post("/contexts", json={"language": "python"}).json()["id"]
        run_cell(ci, "import numpy as np; kept = np.arange(5)", context_id)
        paused = http.post(f"/v1/sandbox/{sandbox_id}/pause")
        assert paused.status_code == 201, paused.text
        kind = paused.json().get("pause_kind")
        # the next request through the router resumes the sandbox
        assert run_cell(ci, "int(kept.sum())", context_id)["items"][0]["text"] == "10", kind
    assert http.get(f"/v1/sandbox/{sandbox_id}/").json()["state"] == "running"
    if not http.get("/v1/health").json()["checkpoint"]:
        return  # snapshots need a runtime that can checkpoint
    name = f"ci-{sandbox_id[-8:]}"
    snap = http.post(f"/v1/sandbox/{sandbox_id}/snapshot/create", json={"name": name})
    assert snap.status_code == 201, snap.text
    restored = http.post("/v1/snapshot/restore", json={"snapshot_name": name})
    assert restored.status_code == 201, restored.text
    copy = restored.json()["id"]
    try:
        with interpreter(server, ca_file, copy) as ci:
            assert run_cell(ci, "int(kept.sum()) * 2", context_id)["items"][0]["text"] == "20"
    finally:
        http.delete(f"/v1/sandbox/{copy}/")
        http.delete(f"/v1/snapshot/{snap.json()['id']}")
