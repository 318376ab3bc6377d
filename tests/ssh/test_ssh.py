"""The SSH gateway (agent-services §4) with the real OpenSSH client (``ssh`` + ``sshpass``):
accesses through the public leap0 SDK's wire, commands, an interactive shell on a terminal that
follows a resize, ``ssh -L`` to a server in the sandbox, refusals, and a paused sandbox that
answers after login. Its own server (``--ssh-port`` on a free port, short access lifetime)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atoll.ssh.gateway import FailureLimiter
from tests._support import api
from tests._support.server import ServerProcess, free_port, spare_server

pytestmark = [pytest.mark.privileged]

TTL_S = 30


@pytest.fixture(scope="module")
def ssh_server() -> Iterator[ServerProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="atoll-test-ssh-", dir="/var/tmp"))
    proc = spare_server(
        data_dir, "--ssh-port", str(free_port()), "--ssh-access-ttl-s", str(TTL_S),
        "--ssh-public-host", "127.0.0.1", tag="s",
    )  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        try:
            with httpx.Client(base_url=proc.base_url, headers=proc.headers, timeout=60) as http:
                for item in http.get("/v1/sandboxes", params={"page-size": 100}).json().get("items", []):
                    http.delete(f"/v1/sandbox/{item['id']}/")
        except httpx.HTTPError:
            pass
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(ssh_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ssh_server.base_url, headers=ssh_server.headers, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def sandbox(client: httpx.Client) -> Iterator[str]:
    sid: str = api.create(client)["id"]
    yield sid
    client.delete(f"/v1/sandbox/{sid}/")


def access(http: httpx.Client, sid: str) -> dict[str, Any]:
    r = http.post(f"/v1/sandbox/{sid}/ssh/access")
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def ssh_argv(grant: dict[str, Any], *extra: str) -> list[str]:
    """``ssh_command`` as a person pastes it, with sshpass and a throwaway known_hosts."""
    command = grant["ssh_command"].split()
    assert command[:2] == ["ssh", "-p"] and command[3] == f"{grant['id']}@127.0.0.1", command
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    options += ["-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no"]
    return ["sshpass", "-e", *command[:3], *options, *extra, command[3]]


def run_ssh(grant: dict[str, Any], command: str, *, password: str | None = None, timeout: float = 60) -> Any:
    env = {**os.environ, "SSHPASS": password if password is not None else grant["password"]}
    argv = [*ssh_argv(grant), command]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def test_access_wire(client: httpx.Client, sandbox: str) -> None:
    grant = access(client, sandbox)
    assert set(grant) == {
        "id",
        "sandbox_id",
        "password",
        "expires_at",
        "created_at",
        "updated_at",
        "ssh_command",
    }
    assert grant["sandbox_id"] == sandbox and len(grant["password"]) >= 32
    base = f"/v1/sandbox/{sandbox}/ssh/{grant['id']}"
    assert client.post(f"{base}/validate", json={"password": grant["password"]}).json() == {
        "valid": True, "sandbox_id": sandbox,
    }  # fmt: skip
    assert client.post(f"{base}/validate", json={"password": "nope"}).json()["valid"] is False
    assert client.post(f"{base}/validate", json={}).status_code == 400
    regen = client.post(f"{base}/regen")
    assert regen.status_code == 200 and regen.json()["password"] != grant["password"]
    assert client.post(f"{base}/validate", json={"password": grant["password"]}).json()["valid"] is False
    assert client.delete(base).status_code == 204
    assert client.delete(base).status_code == 404
    assert client.post("/v1/sandbox/sbxnosuchsandbox/ssh/access").status_code == 404


def test_exec_and_exit_status(client: httpx.Client, sandbox: str) -> None:
    grant = access(client, sandbox)
    done = run_ssh(grant, "echo hi; pwd; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "hi\n/home/user\n", "err\n"), done
    piped = subprocess.run(
        [*ssh_argv(grant), "wc -c"], input="x" * 100_000, capture_output=True, text=True,
        env={**os.environ, "SSHPASS": grant["password"]}, timeout=60,
    )  # fmt: skip
    assert piped.stdout.strip() == "100000", piped


def test_refused_logins(client: httpx.Client, sandbox: str, ssh_server: ServerProcess) -> None:
    grant = access(client, sandbox)
    wrong = run_ssh(grant, "echo hi", password="wrong")
    assert wrong.returncode != 0 and "hi" not in wrong.stdout
    deleted = access(client, sandbox)
    client.delete(f"/v1/sandbox/{sandbox}/ssh/{deleted['id']}")
    assert run_ssh(deleted, "echo hi").returncode != 0
    # another organisation's key cannot see this sandbox's accesses, nor make one
    other_key = ssh_server.mint_key("org-ssh-other")
    other = {"authorization": f"Bearer {other_key}"}
    r = httpx.post(f"{ssh_server.base_url}/v1/sandbox/{sandbox}/ssh/access", headers=other, timeout=30)
    assert r.status_code == 404, r.text
    r = httpx.post(
        f"{ssh_server.base_url}/v1/sandbox/{sandbox}/ssh/{grant['id']}/validate",
        headers=other, json={"password": grant["password"]}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 404, r.text
    assert run_ssh(grant, "echo ok").stdout == "ok\n"  # the right one still works


def test_paused_sandbox_answers_after_login(client: httpx.Client) -> None:
    sid = api.create(client)["id"]
    try:
        grant = access(client, sid)
        assert client.post(f"/v1/sandbox/{sid}/pause").status_code == 201
        done = run_ssh(grant, "echo awake")
        assert done.stdout == "awake\n", done
        assert client.get(f"/v1/sandbox/{sid}/").json()["state"] == "running"
    finally:
        api.delete(client, sid)


def test_local_forwarding_reaches_a_server_in_the_sandbox(client: httpx.Client, sandbox: str) -> None:
    grant = access(client, sandbox)
    api.run(client, sandbox, "echo forwarded > /tmp/index.html")
    started = client.post(
        f"/v1/sandbox/{sandbox}/process/start",
        json={"command": "cd /tmp && exec python -m http.server 8765"},
    )
    assert started.status_code in (200, 201), started.text
    local = free_port()
    env = {**os.environ, "SSHPASS": grant["password"]}
    tunnel = subprocess.Popen(
        ssh_argv(grant, "-N", "-L", f"{local}:localhost:8765"), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{local}/index.html", timeout=5).text
                if body == "forwarded\n":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert body == "forwarded\n"
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def test_interactive_shell_follows_a_resize(client: httpx.Client, sandbox: str) -> None:
    """An interactive ``ssh`` in tmux: ``stty size`` answers the window, then the new one."""
    grant = access(client, sandbox)
    name = f"atoll-ssh-{os.getpid()}"
    env = {**os.environ, "SSHPASS": grant["password"]}
    command = " ".join(f"'{a}'" for a in ssh_argv(grant, "-tt"))
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30", command], env=env, check=True
    )
    try:

        def screen() -> str:
            return subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout

        def wait_for(text: str) -> None:
            deadline = time.monotonic() + 30
            while text not in screen():
                assert time.monotonic() < deadline, screen()
                time.sleep(0.2)

        time.sleep(2)
        subprocess.run(["tmux", "send-keys", "-t", name, "echo SIZE-$(stty size)", "Enter"], check=True)
        wait_for("SIZE-30 100")
        subprocess.run(["tmux", "resize-window", "-t", name, "-x", "120", "-y", "40"], check=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", name, "echo SIZE-$(stty size)", "Enter"], check=True)
        wait_for("SIZE-40 120")
        subprocess.run(["tmux", "send-keys", "-t", name, "exit", "Enter"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_expired_access_is_refused(client: httpx.Client, sandbox: str) -> None:
    grant = access(client, sandbox)
    assert run_ssh(grant, "echo before").stdout == "before\n"
    time.sleep(TTL_S + 1)
    assert run_ssh(grant, "echo after").returncode != 0
    base = f"/v1/sandbox/{sandbox}/ssh/{grant['id']}"
    assert client.post(f"{base}/validate", json={"password": grant["password"]}).json()["valid"] is False


def test_scp_both_ways_and_sftp(client: httpx.Client, sandbox: str, tmp_path: Path) -> None:
    """``scp`` (SFTP underneath since OpenSSH 9) of 50 MB both ways is byte-exact; ``sftp ls``."""
    grant = access(client, sandbox)
    port, target = grant["ssh_command"].split()[2], grant["ssh_command"].split()[3]
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    env = {**os.environ, "SSHPASS": grant["password"]}
    sent = tmp_path / "up.bin"
    sent.write_bytes(os.urandom(50 * 1024 * 1024))
    up = subprocess.run(
        ["sshpass", "-e", "scp", "-P", port, *options, str(sent), f"{target}:up.bin"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    digest = api.run(client, sandbox, "sha256sum /home/user/up.bin | cut -d' ' -f1")["stdout"].strip()
    assert digest == hashlib.sha256(sent.read_bytes()).hexdigest()
    back = tmp_path / "down.bin"
    down = subprocess.run(
        ["sshpass", "-e", "scp", "-P", port, *options, f"{target}:/home/user/up.bin", str(back)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == sent.read_bytes()
    listing = subprocess.run(
        ["sshpass", "-e", "sftp", "-P", port, *options, target],  # -b would forbid passwords
        input="ls -1 /home/user\nbye\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0 and "up.bin" in listing.stdout, listing
    # an absolute symlink inside the sandbox resolves inside the sandbox, never on the host
    probe = Path(f"/root/atoll-ssh-probe-{os.getpid()}")
    probe.write_text("host-side")
    try:
        api.run(client, sandbox, f"echo -n sandbox-side > {probe} && ln -sf {probe} /home/user/link")
        peek = tmp_path / "peek"
        got = subprocess.run(
            ["sshpass", "-e", "scp", "-P", port, *options, f"{target}:link", str(peek)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert peek.read_text() == "sandbox-side"
    finally:
        probe.unlink()
    api.run(client, sandbox, "rm -f /home/user/up.bin /home/user/link")


def test_cli_sandbox_ssh(ssh_server: ServerProcess, sandbox: str) -> None:
    """``atoll sandbox ssh ID CMD``: makes an access and runs ssh through sshpass."""
    env = {**os.environ, "ATOLL_API_KEY": ssh_server.api_key, "ATOLL_BASE_URL": ssh_server.base_url}
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    argv = [sys.executable, "-m", "atoll.cli.main", "sandbox", "ssh", *options, sandbox, "echo", "from-cli"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "from-cli\n"), done.stderr
    printed = subprocess.run(
        [*argv[:5], "--print", sandbox], env=env, capture_output=True, text=True, timeout=60
    )
    assert printed.stdout.startswith("ssh -p ") and "password: " in printed.stdout, printed.stderr


def test_failure_limiter() -> None:
    limiter = FailureLimiter(limit=3, window_s=10)
    for moment in (0.0, 1.0, 2.0):
        assert not limiter.blocked("a", now=moment)
        limiter.failed("a", now=moment)
    assert limiter.blocked("a", now=3.0) and not limiter.blocked("b", now=3.0)
    assert not limiter.blocked("a", now=10.5)  # the first failure left the window
