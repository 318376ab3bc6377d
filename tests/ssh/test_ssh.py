"""The SSH gateway (agent-services §4) with the real OpenSSH client (``ssh`` + ``sshpass``) and
paramiko as a second, independent client: accesses through the public leap0 SDK's wire,
commands, an interactive shell on a terminal that follows a resize, ``ssh -L`` to a server in the
sandbox, SFTP, refusals, a paused sandbox that answers after login, and accesses that go with
their sandbox (an access's expiry: test_ssh_expiry.py). Its own server (``--ssh-port`` on a free
port)."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import paramiko
import pytest

from atoll.ssh.bounds import FailureLimiter
from tests._support import api
from tests._support.server import ServerProcess, free_port
from tests.ssh._helpers import SSH_OPTIONS, TmuxTerminal, access, gateway_port, run_ssh, ssh_argv, ssh_env
from tests.ssh._helpers import ssh_server as start_ssh_server

pytestmark = [pytest.mark.privileged]


@pytest.fixture(scope="module")
def ssh_server() -> Iterator[ServerProcess]:
    with start_ssh_server("s") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(ssh_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ssh_server.base_url, headers=ssh_server.headers, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def sandbox(client: httpx.Client) -> Iterator[str]:
    sid: str = api.create(client)["id"]
    yield sid
    client.delete(f"/v1/sandbox/{sid}/")


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
    env = {**os.environ, "SSHPASS": grant["password"]}
    terminal = TmuxTerminal(f"atoll-ssh-{os.getpid()}", ssh_argv(grant, "-tt"), env, cols=100, rows=30)
    try:
        time.sleep(2)
        terminal.send("echo SIZE-$(stty size)")
        terminal.wait_for("SIZE-30 100", timeout_s=30)
        terminal.resize(120, 40)
        terminal.send("echo SIZE-$(stty size)")
        terminal.wait_for("SIZE-40 120", timeout_s=30)
        terminal.send("exit")
    finally:
        terminal.close()


def test_scp_both_ways_and_sftp(client: httpx.Client, sandbox: str, tmp_path: Path) -> None:
    """``scp`` (SFTP underneath since OpenSSH 9) of 50 MB both ways is byte-exact; ``sftp ls``."""
    grant = access(client, sandbox)
    port, target = grant["ssh_command"].split()[2], grant["ssh_command"].split()[3]
    options = SSH_OPTIONS
    env = ssh_env(grant)
    sent = tmp_path / "up.bin"
    sent.write_bytes(os.urandom(50 * 1024 * 1024))
    up = subprocess.run(
        ["sshpass", "-e", "scp", "-P", port, *options, str(sent), f"{target}:up.bin"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    digest = api.run(client, sandbox, "sha256sum /home/user/up.bin | cut -d' ' -f1")["stdout"].strip()
    assert digest == hashlib.sha256(sent.read_bytes()).hexdigest()
    # the sandbox's root owns it (in a user namespace: its mapped root, never the unmapped host root)
    assert api.run(client, sandbox, "stat -c %u:%g /home/user/up.bin")["stdout"] == "0:0\n"
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
    listing = subprocess.run(
        ["sshpass", "-e", "sftp", "-P", port, *options, target],
        input="ls -ln /home/user/up.bin\nbye\n", env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    entry = [line.split() for line in listing.stdout.splitlines() if line.startswith("-")]
    assert entry and entry[0][-7:-5] == ["0", "0"], listing.stdout  # owners as the sandbox sees them
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
    options = SSH_OPTIONS
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


def stored_accesses(server: ServerProcess, sid: str) -> int:
    with sqlite3.connect(server.data_dir / "atoll.db") as db:
        found: int = db.execute("SELECT count(*) FROM ssh_access WHERE sandbox_id = ?", (sid,)).fetchone()[0]
    return found


def test_accesses_go_with_their_sandbox(client: httpx.Client, ssh_server: ServerProcess) -> None:
    """Deleting a sandbox deletes its accesses from the store and closes their sessions; a pause
    (which also tears the sandbox's processes down) keeps them."""
    sid = api.create(client)["id"]
    try:
        grants = [access(client, sid), access(client, sid)]
        assert client.post(f"/v1/sandbox/{sid}/pause").status_code == 201
        assert stored_accesses(ssh_server, sid) == 2
        session = subprocess.Popen(
            [*ssh_argv(grants[0]), "echo started; exec sleep 600"], env=ssh_env(grants[0]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert session.stdout is not None and session.stdout.readline() == "started\n"
    finally:
        assert client.delete(f"/v1/sandbox/{sid}/").status_code == 204
    assert stored_accesses(ssh_server, sid) == 0
    assert session.wait(timeout=30) != 0  # the gateway closed the logged-in session
    assert run_ssh(grants[1], "echo hi").returncode != 0


def paramiko_login(grant: dict[str, Any]) -> paramiko.SSHClient:
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    ssh.connect(
        "127.0.0.1", port=gateway_port(grant), username=grant["id"], password=grant["password"],
        allow_agent=False, look_for_keys=False, timeout=30, auth_timeout=30,
    )  # fmt: skip
    return ssh


def read_until(channel: paramiko.Channel, text: bytes, timeout_s: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    channel.settimeout(1)
    while text not in seen:
        assert time.monotonic() < deadline, seen
        try:
            seen += channel.recv(65536)
        except TimeoutError:
            continue
    return seen


def test_paramiko_exec_shell_and_sftp(client: httpx.Client, sandbox: str, ssh_server: ServerProcess) -> None:
    """paramiko, a client that shares no code with OpenSSH: exec with exit status and stdin, a
    shell on a terminal that follows a resize, SFTP both ways; the gateway's host key is the
    one kept in the data directory."""
    grant = access(client, sandbox)
    with paramiko_login(grant) as ssh:
        transport = ssh.get_transport()
        assert transport is not None
        kept = asyncssh.read_private_key(str(ssh_server.data_dir / "ssh_host_ed25519_key"))
        public = kept.export_public_key("openssh").split()[1].decode()
        assert transport.get_remote_server_key().get_base64() == public
        _, stdout, stderr = ssh.exec_command("echo hi; pwd; echo err >&2; exit 3")
        assert (stdout.read(), stderr.read()) == (b"hi\n/home/user\n", b"err\n")
        assert stdout.channel.recv_exit_status() == 3
        stdin, stdout, _ = ssh.exec_command("wc -c")
        stdin.write(b"x" * 100_000)
        stdin.channel.shutdown_write()
        assert stdout.read().strip() == b"100000" and stdout.channel.recv_exit_status() == 0

        shell = ssh.invoke_shell(term="xterm", width=90, height=20)
        shell.send(b"echo SIZE-$(stty size)\n")
        read_until(shell, b"SIZE-20 90")
        shell.resize_pty(width=120, height=40)
        time.sleep(0.5)
        shell.send(b"echo SIZE-$(stty size)\n")
        read_until(shell, b"SIZE-40 120")
        shell.send(b"exit\n")
        assert shell.recv_exit_status() == 0

        sent = os.urandom(5 * 1024 * 1024)
        with ssh.open_sftp() as sftp:
            sftp.putfo(io.BytesIO(sent), "paramiko.bin")  # relative: the sandbox's workdir
            assert "paramiko.bin" in sftp.listdir("/home/user")
            assert sftp.stat("/home/user/paramiko.bin").st_size == len(sent)
            back = io.BytesIO()
            sftp.getfo("/home/user/paramiko.bin", back)
            assert back.getvalue() == sent
            sftp.mkdir("made-by-paramiko")
            sftp.rename("paramiko.bin", "made-by-paramiko/moved.bin")
        digest = api.run(client, sandbox, "sha256sum /home/user/made-by-paramiko/moved.bin")["stdout"]
        assert digest.split()[0] == hashlib.sha256(sent).hexdigest()
        api.run(client, sandbox, "rm -rf /home/user/made-by-paramiko")
    with pytest.raises(paramiko.AuthenticationException):
        paramiko_login({**grant, "password": "wrong"})
