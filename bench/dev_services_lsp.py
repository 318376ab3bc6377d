"""LSP completion latency through the control plane, next to the language server's own answer
time measured in the same run (issue 19's speed target: warm p50 <= 20 ms above the server's).

For each runtime it starts its own `atoll serve`, creates a sandbox of the default template,
and for N runs measures, on the same warm document (`import os\\nos.pa`):
- `POST /v1/sandbox/{id}/lsp/completions` (HTTP, the host's JSON-RPC client, the bridge's TCP
  hop into the sandbox, pyright) with a kept-alive HTTP connection;
- the same `textDocument/completion` sent straight to a second pyright over its stdio, from a
  script inside the sandbox (no Atoll in between): the server's own answer time.

    python bench/dev_services_lsp.py [--runs 30] [--runtimes runc,runsc] [--templates-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "benchlsp")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "abl")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.243.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import row
from tests._support.server import ServerProcess

TEMPLATE = "system/debian:bookworm"
PROJECT = "/home/user/bench"
CODE = "import os\nos.pa"
# Run inside the sandbox: pyright over its own stdio, N+1 completions (the first is dropped as
# the cold one), printed as JSON milliseconds.
DIRECT = r"""
import json, subprocess, sys, time
proc = subprocess.Popen(["pyright-langserver", "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def send(msg):
    body = json.dumps(msg).encode()
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body); proc.stdin.flush()
def receive():
    length = 0
    while True:
        line = proc.stdout.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(proc.stdout.read(length))
def call(i, method, params):
    send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
    while True:
        msg = receive()
        if "method" in msg and "id" in msg:  # the server asks: answer neutrally
            items = (msg.get("params") or {}).get("items") or []
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "result": [None] * len(items) if msg["method"] == "workspace/configuration" else None})
        elif msg.get("id") == i and "method" not in msg:
            return msg
root, uri = sys.argv[2], "file://" + sys.argv[2] + "/direct.py"
call(1, "initialize", {"processId": None, "rootUri": "file://" + root, "capabilities": {},
                       "workspaceFolders": [{"uri": "file://" + root, "name": "b"}]})
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
    "uri": uri, "languageId": "python", "version": 1, "text": "import os\nos.pa"}}})
times = []
for i in range(int(sys.argv[1]) + 1):
    start = time.perf_counter()
    answer = call(10 + i, "textDocument/completion",
                  {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 5}})
    if i:
        times.append((time.perf_counter() - start) * 1000)
    assert "result" in answer, answer
proc.kill()
print(json.dumps(times))
"""


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def measure(runtime: str, runs: int, templates_dir: str | None) -> list[str]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-bench-lsp-", dir="/var/tmp"))
    extra = ("--templates-dir", templates_dir) if templates_dir else ()
    server = ServerProcess(data_dir=data_dir, runtime=runtime, extra_args=extra)
    server.start(timeout=900)
    lines: list[str] = []
    try:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
            r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2})
            r.raise_for_status()
            sid = r.json()["id"]
            try:
                execute = f"/v1/sandbox/{sid}/process/execute"
                http.post(execute, json={"command": f"mkdir -p {PROJECT}"}).raise_for_status()
                base = f"/v1/sandbox/{sid}/lsp"
                body = {"language_id": "python", "path_to_project": PROJECT}
                doc = {**body, "uri": f"file://{PROJECT}/main.py"}
                start = time.perf_counter()
                http.post(f"{base}/start", json=body).raise_for_status()
                start_ms = ms(start)
                http.post(f"{base}/did-open", json={**doc, "text": CODE}).raise_for_status()
                at = {**doc, "position": {"line": 1, "character": 5}}
                http.post(f"{base}/completions", json=at).raise_for_status()  # the cold one
                api: list[float] = []
                for _ in range(runs):
                    start = time.perf_counter()
                    r = http.post(f"{base}/completions", json=at)
                    api.append(ms(start))
                    assert r.status_code == 200 and "path" in r.text, r.text[:300]
                http.post(f"{base}/stop", json=body).raise_for_status()
                r = http.post(
                    execute,
                    json={"command": f"python3 -c {shlex.quote(DIRECT)} {runs} {PROJECT}", "timeout": 300},
                )
                r.raise_for_status()
                assert r.json()["exit_code"] == 0, r.json()["stderr"][-2000:]
                direct = json.loads(r.json()["stdout"])
            finally:
                http.delete(f"/v1/sandbox/{sid}/")
        lines.append(f"[{runtime or 'default'}] lsp/start (pyright, initialize) {start_ms:.0f} ms")
        lines.append(row(f"[{runtime or 'default'}] completion via API", api, direct))
        lines.append(row(f"[{runtime or 'default'}] completion, pyright stdio", direct))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--templates-dir", default=None, help="another template cache (default: shared)")
    args = parser.parse_args()
    for runtime in args.runtimes.split(","):
        for line in measure(runtime, args.runs, args.templates_dir):
            print(line, flush=True)


if __name__ == "__main__":
    main()
