"""SSH through an API replica (issue #22: the replica "also runs the router and the SSH gateway"):
one real PostgreSQL, one node (``atoll node run``) and one API replica (``atoll serve --role
api``), each with its own SSH gateway. An access made through the replica names the REPLICA's
gateway, and the real OpenSSH client (``ssh``/``sftp`` with sshpass) reaches the sandbox on the
node through it: a command's output and exit status, stdin, a shell on a terminal, SFTP both
ways, ``ssh -L`` to a server in the sandbox; a wrong password is refused; deleting the sandbox
closes a relayed session and refuses new logins; the node records its gateway and host key; a
node without a gateway, or whose recorded host key is not its gateway's, is refused with a
message naming it."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from tests._support import api
from tests._support.cluster import NodeProcess, create_key, side_node
from tests._support.leaks import assert_no_leaks
from tests._support.postgres import PostgresServer
from tests._support.server import ServerProcess, free_port, serving, side_server
from tests.ssh._helpers import SSH_OPTIONS, TmuxTerminal, access, run_ssh, ssh_argv, ssh_env

pytestmark = [pytest.mark.privileged]
TOKEN = secrets.token_hex(16)
NODE_ID = "node-s"


class Cluster:
    def __init__(
        self, node: NodeProcess, replica: ServerProcess, key: str, database: str, node_ssh_port: int
    ) -> None:
        self.node, self.replica, self.key, self.database = node, replica, key, database
        self.node_ssh_port = node_ssh_port
        self.auth = {"authorization": f"Bearer {key}"}

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.replica.base_url, headers=self.auth, timeout=120)


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("ssh-relay")
    database = "t_" + uuid.uuid4().hex[:12]
    url = postgres.create_database(database)
    common = ("--database-url", url, "--heartbeat-interval-s", "1", "--node-down-after-s", "3")
    env = {"ATOLL_CLUSTER_TOKEN": TOKEN}
    replica_ssh = (
        "--ssh-port",
        str(free_port()),
        "--ssh-host",
        "127.0.0.1",
        "--ssh-public-host",
        "127.0.0.1",
    )
    replica = side_server(
        tmp / "api",
        "k",
        29,
        extra_args=(*common, "--role", "api", *replica_ssh),
        extra_env=env,
    )
    node_ssh_port = free_port()
    node = side_node(
        tmp / "node",
        "s",
        28,
        extra_args=(
            *common,
            "--node-id",
            NODE_ID,
            "--ssh-port",
            str(node_ssh_port),
            "--ssh-host",
            "127.0.0.1",
        ),
        extra_env=env,
    )
    with serving(node), serving(replica):
        key = create_key(url, "org-ssh-relay")
        for process in (node, replica):  # their clean-up (serving) deletes the organisation's sandboxes
            process.api_key = key
        yield Cluster(node, replica, key, database, node_ssh_port)
        if node.proc is not None and node.proc.poll() is None:
            node.delete_everything()
            assert_no_leaks(node)


@pytest.fixture(scope="module")
def sandbox(cluster: Cluster) -> Iterator[str]:
    with cluster.api() as http:
        sandbox_id = str(api.create(http, timeout=3600)["id"])
        try:
            yield sandbox_id
        finally:
            http.delete(f"/v1/sandbox/{sandbox_id}/")


def through_replica(cluster: Cluster, grant: dict[str, Any]) -> dict[str, Any]:
    """The grant, checked to name the replica's gateway (not the node's)."""
    port = int(grant["ssh_command"].split()[2])
    assert port != cluster.node_ssh_port
    assert f"-p {port} " in grant["ssh_command"]
    return grant


def test_the_node_records_its_gateway_and_host_key(cluster: Cluster, postgres: PostgresServer) -> None:
    recorded = postgres.psql(
        f"SELECT ssh_address || ' ' || ssh_host_key FROM nodes WHERE id = '{NODE_ID}'", cluster.database
    )
    address, key_type, key = recorded.split()[:3]
    assert address == f"127.0.0.1:{cluster.node_ssh_port}", recorded
    on_disk = (cluster.node.data_dir / "ssh_host_ed25519_key").read_bytes()  # as its gateway serves it
    assert f"{key_type} {key}" == asyncssh.import_private_key(on_disk).export_public_key().decode().strip()


def test_a_command_its_output_stdin_and_exit_status(cluster: Cluster, sandbox: str) -> None:
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
    done = run_ssh(grant, "cat /etc/hostname >/dev/null; echo out-$((6*7)); echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "out-42\n", "err\n"), done
    # stdin relayed to the command, to its end (cat exits at EOF), 1 MiB of it
    blob = os.urandom(512 * 1024).hex()
    argv = [*ssh_argv(grant), "wc -c"]
    counted = subprocess.run(
        argv, input=blob, capture_output=True, text=True, env=ssh_env(grant), timeout=120
    )
    assert (counted.returncode, counted.stdout.strip()) == (0, str(len(blob))), counted


def test_a_shell_on_a_terminal_follows_its_window(cluster: Cluster, sandbox: str) -> None:
    """An interactive ``ssh -tt`` in tmux: the terminal type and ``stty size`` reach the sandbox,
    then the window's new size; ``exit`` ends it."""
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
    env = {**ssh_env(grant), "TERM": "vt220"}
    terminal = TmuxTerminal(f"atoll-ssh-relay-{os.getpid()}", ssh_argv(grant, "-tt"), env, cols=100, rows=30)
    try:
        time.sleep(2)
        terminal.send("echo SIZE-$(stty size) SUM-$((40+2))")
        terminal.wait_for("SIZE-30 100 SUM-42")
        terminal.resize(120, 40)
        terminal.send("echo SIZE-$(stty size) TERM-$TERM")
        terminal.wait_for("SIZE-40 120 TERM-")
        terminal.send("exit")
        terminal.wait_closed()
    finally:
        terminal.close()


def test_sftp_puts_and_gets_a_file(cluster: Cluster, sandbox: str, tmp_path: Path) -> None:
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
        port, target = grant["ssh_command"].split()[2], grant["ssh_command"].split()[3]
        sent = tmp_path / "up.bin"
        sent.write_bytes(os.urandom(4 * 1024 * 1024))
        back = tmp_path / "back.bin"
        session = subprocess.run(
            ["sshpass", "-e", "sftp", "-P", port, *SSH_OPTIONS, target],  # -b would forbid passwords
            input=f"put {sent} /home/user/relayed.bin\nget /home/user/relayed.bin {back}\nbye\n",
            env=ssh_env(grant), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert session.returncode == 0, session
        digest = api.run(http, sandbox, "sha256sum /home/user/relayed.bin | cut -d' ' -f1")["stdout"].strip()
        assert digest == hashlib.sha256(sent.read_bytes()).hexdigest()
        assert back.read_bytes() == sent.read_bytes()
        api.run(http, sandbox, "rm -f /home/user/relayed.bin")


def test_local_forwarding_reaches_a_server_in_the_sandbox(cluster: Cluster, sandbox: str) -> None:
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
        api.run(http, sandbox, "echo forwarded-through-replica > /tmp/index.html")
        started = http.post(
            f"/v1/sandbox/{sandbox}/process/start",
            json={"command": "cd /tmp && exec python -m http.server 8766"},
        )
        assert started.status_code in (200, 201), started.text
    local = free_port()
    tunnel = subprocess.Popen(
        ssh_argv(grant, "-N", "-L", f"{local}:localhost:8766"), env=ssh_env(grant),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        body = ""
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{local}/index.html", timeout=5, trust_env=False).text
                if body == "forwarded-through-replica\n":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert body == "forwarded-through-replica\n"
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)


def test_a_wrong_password_is_refused(cluster: Cluster, sandbox: str) -> None:
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
    refused = run_ssh(grant, "echo in", password=grant["password"] + "x")
    assert refused.returncode != 0 and refused.stdout == "", refused  # sshpass: 5
    assert "Permission denied" in refused.stderr, refused
    assert run_ssh(grant, "echo in").stdout == "in\n"


def test_deleting_the_sandbox_closes_sessions_and_refuses_logins(cluster: Cluster) -> None:
    with cluster.api() as http:
        sandbox_id = str(api.create(http, timeout=600)["id"])
        grant = through_replica(cluster, access(http, sandbox_id))
        assert run_ssh(grant, "echo alive").stdout == "alive\n"
        held = subprocess.Popen(
            [*ssh_argv(grant), "echo started; exec sleep 600"], env=ssh_env(grant),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert held.stdout is not None
            assert held.stdout.readline() == "started\n"
            assert http.delete(f"/v1/sandbox/{sandbox_id}/").status_code in (200, 204)
            held.wait(timeout=60)  # the node closed its side; the replica followed
            assert held.returncode != 0
        finally:
            if held.poll() is None:
                held.kill()
                held.wait()
    refused = run_ssh(grant, "echo again")
    assert refused.returncode != 0 and refused.stdout == "", refused  # sshpass: 5
    assert "Permission denied" in refused.stderr, refused


OTHER_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.mark.parametrize(
    ("column", "value", "said"),
    [
        # what a node with --ssh-port 0 records: no address
        ("ssh_address", "NULL", f"node {NODE_ID} runs no SSH gateway"),
        # a host key other than the one the node's gateway has: the replica does not log in there
        ("ssh_host_key", f"'{OTHER_KEY}'", f"node {NODE_ID} cannot be reached over SSH"),
    ],
    ids=["no-gateway", "other-host-key"],
)
def test_the_replica_refuses_a_node_it_cannot_use(
    cluster: Cluster, sandbox: str, postgres: PostgresServer, column: str, value: str, said: str
) -> None:
    """The replica says why in the banner, and refuses the login. A trigger keeps the running
    node's heartbeats (each second) from writing its own values back meanwhile."""
    with cluster.api() as http:
        grant = through_replica(cluster, access(http, sandbox))
    postgres.psql(
        f"CREATE FUNCTION atoll_test_node() RETURNS trigger AS $$ BEGIN NEW.{column} := {value}; "
        "RETURN NEW; END $$ LANGUAGE plpgsql; "
        "CREATE TRIGGER atoll_test_node BEFORE UPDATE ON nodes FOR EACH ROW "
        "EXECUTE FUNCTION atoll_test_node(); "
        f"UPDATE nodes SET {column} = {value} WHERE id = '{NODE_ID}'",
        cluster.database,
    )
    try:
        # the banner shows at OpenSSH's default log level (SSH_OPTIONS say ERROR)
        argv = ["LogLevel=INFO" if a == "LogLevel=ERROR" else a for a in [*ssh_argv(grant), "echo in"]]
        refused = subprocess.run(argv, capture_output=True, text=True, env=ssh_env(grant), timeout=60)
    finally:
        postgres.psql(
            "DROP TRIGGER atoll_test_node ON nodes; DROP FUNCTION atoll_test_node()", cluster.database
        )
    assert refused.returncode != 0 and refused.stdout == "", refused  # sshpass: 5, a refused password
    assert said in refused.stderr, refused.stderr
    deadline = time.monotonic() + 30  # the next heartbeat records the node's own values again
    while run_ssh(grant, "echo back").stdout != "back\n":
        assert time.monotonic() < deadline
        time.sleep(1)
