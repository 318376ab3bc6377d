"""Developer services through the real API (issue 19), each next to a baseline from the same run.

Starts its own `atoll serve` per runtime (SSH gateway on a free port), one sandbox of the default
template, and measures over N runs:

- git: `POST git/status` on a 10,000-file repository, next to the same
  `git status --porcelain=v2 --branch` through `process/execute` (target <= 1.1x);
- LSP, warm: `POST lsp/completions` (HTTP, the host's JSON-RPC client, the bridge into the
  sandbox, pyright) after `import os\\nos.pa`, next to the same `textDocument/completion` sent
  straight to a second pyright over its stdio from inside the sandbox: the server's own answer
  time (target: p50 <= 20 ms above it);
- SSH: `ssh ID@127.0.0.1 true` through the gateway (client start -> login -> exit status), next
  to OpenSSH's sshd on the host (its own daemon on a loopback port, key login, run here when
  /usr/sbin/sshd exists: `make bench` installs openssh-server; target <= 1.5x) and
  to `process/execute true`; scp of --scp-mib MiB to each, in MB/s (target >= 0.8x sshd's).
  Both logins use the same client, key exchange (curve25519-sha256) and sshpass wrapper; the
  host's root ~/.bashrc is masked for that sshd (bash reads it for sshd's commands).

    python bench/dev_services.py [--runs 30] [--runtimes runc,runsc] [--scp-mib 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("ATOLL_TEST_INSTANCE", "benchdev")
os.environ.setdefault("ATOLL_TEST_IFACE_PREFIX", "abd")
os.environ.setdefault("ATOLL_TEST_SUBNET", "10.245.0.0/16")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import row
from tests._support.server import ServerProcess, free_port

TEMPLATE = "system/debian:bookworm"
REPO = "/home/user/big"
PROJECT = "/home/user/bench"
CODE = "import os\nos.pa"
SSHD = Path("/usr/sbin/sshd")
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "Compression=no",
    # the same key exchange both ways: OpenSSH prefers sntrup761 (post-quantum, ~150 ms of the
    # client's CPU here), which asyncssh does not offer
    "-o", "KexAlgorithms=curve25519-sha256",
]  # fmt: skip
# 100 directories of 100 files, committed, then one file changed: status has something to say
MAKE_REPO = f"""set -e
mkdir -p {REPO} && cd {REPO} && git init -q
python3 -c '
import os
for d in range(100):
    os.makedirs(f"d{{d}}", exist_ok=True)
    for f in range(100):
        open(f"d{{d}}/f{{f}}.txt", "w").write(f"{{d}} {{f}}\\n")
'
git add -A && git -c user.email=b@example.com -c user.name=bench commit -qm init
echo changed >> d0/f0.txt"""
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


def execute(http: httpx.Client, sid: str, command: str, **extra: Any) -> dict[str, Any]:
    r = http.post(f"/v1/sandbox/{sid}/process/execute", json={"command": command, **extra})
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


# git ---------------------------------------------------------------------------------------------
def git_status(http: httpx.Client, sid: str, runs: int) -> tuple[list[float], list[float]]:
    done = execute(http, sid, MAKE_REPO, timeout=600)
    assert done["exit_code"] == 0, done["stderr"][-2000:]
    api, plain = [], []
    for i in range(runs + 1):  # the first of each warms the page cache and git's index
        start = time.perf_counter()
        r = http.post(f"/v1/sandbox/{sid}/git/status", json={"path": REPO})
        took = ms(start)
        assert r.status_code == 200 and "d0/f0.txt" in r.json()["output"], r.text[:300]
        start = time.perf_counter()
        out = execute(http, sid, "git status --porcelain=v2 --branch", cwd=REPO)
        took_plain = ms(start)
        assert "d0/f0.txt" in out["stdout"], out
        if i:
            api.append(took)
            plain.append(took_plain)
    return api, plain


# LSP ---------------------------------------------------------------------------------------------
def lsp_completions(http: httpx.Client, sid: str, runs: int) -> tuple[float, list[float], list[float]]:
    execute(http, sid, f"mkdir -p {PROJECT}")
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
    out = execute(http, sid, f"python3 -c {shlex.quote(DIRECT)} {runs} {PROJECT}", timeout=300)
    assert out["exit_code"] == 0, out["stderr"][-2000:]
    return start_ms, api, json.loads(out["stdout"])


# SSH ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def host_sshd(scratch: Path) -> Iterator[tuple[int, Path] | None]:
    """OpenSSH's sshd on 127.0.0.1 with its own config, host key and one authorized key (root
    by key only), for as long as the block runs: (port, client key), or None without sshd."""
    if not SSHD.exists():
        yield None
        return
    port = free_port()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(scratch / name)], check=True)
    shutil.copy(scratch / "client_key.pub", scratch / "authorized_keys")
    config = scratch / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {scratch / 'host_key'}\n"
        f"AuthorizedKeysFile {scratch / 'authorized_keys'}\nPidFile {scratch / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
    # in a mount namespace of its own where root's ~/.bashrc (which bash reads for sshd's
    # commands) is empty: a host's personal shell set-up is no part of what sshd costs, and the
    # sandbox's /bin/sh reads none either
    masked = " ".join(f"mount --bind /dev/null {rc} &&" for rc in ("/root/.bashrc",) if Path(rc).exists())
    command = f"{masked} exec {SSHD} -D -e -f {config}"
    daemon = subprocess.Popen(["unshare", "--mount", "sh", "-c", command], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and daemon.poll() is None, "sshd did not start"
                time.sleep(0.05)
        yield port, scratch / "client_key"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def timed_runs(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    took = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        if i:
            took.append(ms(start))
        assert done.returncode == 0, done.stderr[-2000:]
    return took


Argv = Callable[[Path], list[str]]


def scp_mb_s(argv_for: Argv, source: Path, env: dict[str, str], tries: int = 3) -> float:
    """The median of ``tries`` uploads of ``source``, in MB/s (10^6 bytes)."""
    rates = []
    for _ in range(tries):
        start = time.perf_counter()
        done = subprocess.run(argv_for(source), env=env, capture_output=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        rates.append(source.stat().st_size / (time.perf_counter() - start) / 1e6)
    return statistics.median(rates)


def ssh_figures(http: httpx.Client, sid: str, runs: int, scp_mib: int, scratch: Path, tag: str) -> list[str]:
    r = http.post(f"/v1/sandbox/{sid}/ssh/access")
    r.raise_for_status()
    grant = r.json()
    _, _, port, target = grant["ssh_command"].split()
    env = {**os.environ, "SSHPASS": grant["password"]}
    login = ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    ssh = ["sshpass", "-e", "ssh", "-p", port, *SSH_OPTIONS, *login, target, "true"]
    gateway = timed_runs(ssh, env, runs)
    plain = []
    for i in range(runs + 1):
        start = time.perf_counter()
        assert execute(http, sid, "true")["exit_code"] == 0
        if i:
            plain.append(ms(start))
    payload = scratch / "payload.bin"
    with payload.open("wb") as out:
        for _ in range(scp_mib):
            out.write(os.urandom(1 << 20))

    def to_gateway(source: Path) -> list[str]:
        return ["sshpass", "-e", "scp", "-P", port, *SSH_OPTIONS, *login, str(source), f"{target}:scp.bin"]

    gateway_scp = scp_mb_s(to_gateway, payload, env)
    execute(http, sid, "rm -f /home/user/scp.bin")
    lines = []
    with host_sshd(scratch) as sshd:
        if sshd is None:
            lines.append(row(f"{tag} ssh true via gateway", gateway, plain))
            lines.append(f"{tag} (no /usr/sbin/sshd: baseline is process/execute; `make bench` installs it)")
        else:
            sshd_port, key = sshd
            keyed = ["-p", str(sshd_port), "-i", str(key), *SSH_OPTIONS, "-o", "IdentitiesOnly=yes"]
            direct = timed_runs(["sshpass", "-e", "ssh", *keyed, "root@127.0.0.1", "true"], env, runs)
            lines.append(row(f"{tag} ssh true via gateway", gateway, direct))
            lines.append(row(f"{tag} ssh true, host sshd", direct))

            def to_sshd(source: Path) -> list[str]:
                keyed_scp = ["-P", str(sshd_port), "-i", str(key), *SSH_OPTIONS, "-o", "IdentitiesOnly=yes"]
                return ["scp", *keyed_scp, str(source), f"root@127.0.0.1:{scratch / 'landed.bin'}"]

            sshd_scp = scp_mb_s(to_sshd, payload, env)
            lines.append(
                f"{tag} scp {scp_mib} MiB up: gateway {gateway_scp:.0f} MB/s, host sshd {sshd_scp:.0f} MB/s"
                f" ({gateway_scp / sshd_scp:.2f}x sshd)"
            )
    lines.append(row(f"{tag} process/execute true", plain))
    if sshd is None:
        lines.append(f"{tag} scp {scp_mib} MiB up: gateway {gateway_scp:.0f} MB/s")
    return lines


def measure(runtime: str, runs: int, scp_mib: int) -> list[str]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-bench-dev-", dir="/var/tmp"))
    scratch = Path(tempfile.mkdtemp(prefix="atoll-bench-dev-ssh-"))
    extra = ("--ssh-port", str(free_port()), "--ssh-public-host", "127.0.0.1")
    server = ServerProcess(data_dir=data_dir, runtime=runtime, extra_args=extra)
    server.start(timeout=900)
    tag = f"[{runtime or 'default'}]"
    lines: list[str] = []
    try:
        with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=300) as http:
            r = http.post("/v1/sandbox", json={"template_name": TEMPLATE, "memory": 2048, "vcpu": 2})
            r.raise_for_status()
            sid = r.json()["id"]
            try:
                api, plain = git_status(http, sid, runs)
                lines.append(row(f"{tag} git status (10k files) via git/", api, plain))
                lines.append(row(f"{tag} git status via process/execute", plain))
                start_ms, completions, direct = lsp_completions(http, sid, runs)
                lines.append(f"{tag} lsp/start (pyright, initialize) {start_ms:.0f} ms")
                lines.append(row(f"{tag} completion via API", completions, direct))
                lines.append(row(f"{tag} completion, pyright stdio", direct))
                above = statistics.median(completions) - statistics.median(direct)
                lines.append(f"{tag} completion p50 above pyright's own: {above:+.1f} ms")
                lines += ssh_figures(http, sid, runs, scp_mib, scratch, tag)
            finally:
                http.delete(f"/v1/sandbox/{sid}/")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--runtimes", default="runc,runsc")
    parser.add_argument("--scp-mib", type=int, default=64)
    args = parser.parse_args()
    for runtime in args.runtimes.split(","):
        for line in measure(runtime, args.runs, args.scp_mib):
            print(line, flush=True)


if __name__ == "__main__":
    main()
