"""Runs a real ``atoll serve`` for the tests: its own instance name, data dir, interface prefix
and subnet (so it never touches a developer's ``make serve``), no upstream DNS for sandboxes,
and the shared template cache."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Overridable so that several test runs can share one host without touching each other's
# namespaces, interfaces, cgroups and nft tables (each run reconciles only its own instance).
INSTANCE = os.environ.get("ATOLL_TEST_INSTANCE", "test")
IFACE_PREFIX = os.environ.get("ATOLL_TEST_IFACE_PREFIX", "att")
SUBNET = os.environ.get("ATOLL_TEST_SUBNET", "10.210.0.0/16")
RUNTIME = os.environ.get("ATOLL_TEST_RUNTIME", "")  # empty: the server's default
API_KEY = "atl_test_" + os.urandom(12).hex()
PIDS_LIMIT = 256
DISK_MIB = 1024
SANDBOX_DOMAIN = "sbx.localhost"
# util-linux's setpriv: root's capabilities gone (bounding, inheritable and ambient sets), and no
# way back (no_new_privs): what the API Deployment's securityContext drops (deploy/)
DROP_ALL_CAPABILITIES = (
    "setpriv",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--no-new-privs",
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Below the kernel's ephemeral range (32768-60999 by default): a port the kernel hands out for
# bind(0) is also one any outgoing connection may take before the server binds it (CI saw
# "address already in use" for a server's own API port). Each picked once per test process.
PORT_RANGE = (10000, _ephemeral_low() - 1)
_picked: set[int] = set()
_ports = random.Random()


def _bindable(port: int) -> bool:
    """Free on IPv4's wildcard (the API's) and IPv6's (the router's ``::1``, when IPv6 exists)."""
    with socket.socket(socket.AF_INET) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    if not socket.has_ipv6:
        return True
    try:
        v6 = socket.socket(socket.AF_INET6)
    except OSError:  # IPv6 disabled on this host
        return True
    with v6:
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            v6.bind(("::", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range (when the host leaves room)."""
    low, high = PORT_RANGE
    for _ in range(1000 if high - low >= 1000 else 0):
        port = _ports.randint(low, high)
        if port not in _picked and _bindable(port):
            _picked.add(port)
            return port
    with socket.socket() as s:  # a host whose ephemeral range starts low: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    port: int = field(default_factory=free_port)
    router_port: int = field(default_factory=free_port)
    api_key: str = API_KEY
    host: str = "0.0.0.0"  # all interfaces, so the isolation tests prove the firewall, not the bind
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    # a second server in one test run needs its own host resources (it reconciles them)
    instance: str = INSTANCE
    iface_prefix: str = IFACE_PREFIX
    subnet: str = SUBNET
    runtime: str = RUNTIME
    extra_args: tuple[str, ...] = ()
    database_url: str | None = None  # None: SQLite in data_dir (tests/conftest.py: ATOLL_TEST_DATABASE)
    unremovable_leak: str = ""  # tests/conftest.py no_leaks: a leak that even a restart left
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. ATOLL_CLUSTER_TOKEN

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "server.log"

    @property
    def own_url(self) -> str:
        """This process's API (``base_url`` too, except for a cluster's node: tests/_support/cluster.py)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.own_url

    @property
    def router_url(self) -> str:
        """The sandbox router on loopback (send ``Host: {id}[-{port}].{SANDBOX_DOMAIN}:{port}``)."""
        return f"http://127.0.0.1:{self.router_port}"

    def sandbox_host(self, sandbox_id: str, port: int | None = None) -> str:
        """The ``Host`` an ``invoke_url`` for this server names (``{id}[-{port}].{domain}:{port}``)."""
        label = sandbox_id if port is None else f"{sandbox_id}-{port}"
        return f"{label}.{SANDBOX_DOMAIN}:{self.router_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    @property
    def is_api_replica(self) -> bool:
        return any(
            a == "--role" and b == "api" for a, b in zip(self.extra_args, self.extra_args[1:], strict=False)
        )

    def argv(self) -> list[str]:
        # an API replica runs as in production (docs/cluster.md): with no capability at all, and
        # no template of its own (a directory of them would hide a path that needs the nodes')
        replica = (*DROP_ALL_CAPABILITIES, "--") if self.is_api_replica else ()
        own = ("--templates-dir", str(self.data_dir / "no-templates")) if self.is_api_replica else ()
        return [
            *replica, sys.executable, "-m", "atoll.cli.main", "serve",
            "--host", self.host, "--port", str(self.port),
            "--instance", self.instance, "--data-dir", str(self.data_dir),
            "--iface-prefix", self.iface_prefix, "--subnet", self.subnet,
            "--dns-server", "none", "--pids-limit", str(PIDS_LIMIT),
            "--netns-pool-size", "2", "--log-level", "warning", "--warm-pool-size", "0",
            # tests send far more than 1000 requests a minute with one key (the limit has its
            # own tests); a small disk keeps the escape suite's disk-fill attempt quick
            "--rate-limit", "0", "--disk-mib", str(DISK_MIB),
            "--no-build-templates",  # make test builds them first; a test about it passes --build-templates
            "--ssh-port", "0",  # no SSH gateway (tests/ssh passes a port of its own: the last one wins)
            *(["--runtime", self.runtime] if self.runtime else []),
            "--router-port", str(self.router_port), "--sandbox-domain", SANDBOX_DOMAIN,
            *(["--database-url", self.database_url] if self.database_url else []),
            *own, *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 120.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ATOLL_API_KEY": self.api_key, **self.extra_env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"atoll serve exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.own_url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"atoll serve did not come up:\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def mint_key(self, org: str) -> str:
        """A new API key for ``org`` (created if new), straight in this server's store."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "atoll.cli.main",
                "keys",
                "create",
                "--org",
                org,
                "--data-dir",
                str(self.data_dir),
                *(["--database-url", self.database_url] if self.database_url else []),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip().splitlines()[-1]

    def delete_everything(self) -> None:
        """Delete every sandbox the default key's org still has (a fixture's last clean-up)."""
        try:
            with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=60) as http:
                for item in http.get("/v1/sandboxes", params={"page-size": 100}).json().get("items", []):
                    http.delete(f"/v1/sandbox/{item['id']}/")
        except httpx.HTTPError:
            pass


def spare_server(data_dir: Path, *extra_args: str, tag: str = "x") -> ServerProcess:
    """A second server for tests that need one of their own (crashes, failure injection, rate
    limits): its own instance, interface prefix and the second quarter of the test subnet, so it
    can run beside the session server. ``tag`` (letters) tells spares in one run apart."""
    quarter = list(ipaddress.IPv4Network(SUBNET).subnets(prefixlen_diff=2))[1]
    return ServerProcess(
        data_dir=data_dir,
        instance=(INSTANCE[:9] + tag)[:12],
        iface_prefix=(tag + IFACE_PREFIX)[:6],
        subnet=str(quarter),
        extra_args=extra_args,
    )


def side_server(data_dir: Path, tag: str, index: int, **options: object) -> ServerProcess:
    """A second server beside the session's, with host resources of its own that derive from
    this run's (so concurrent runs with different ATOLL_TEST_* settings never collide): instance
    ``<instance><tag>``, interfaces ``q<tag><prefix>N`` (outside the session's ``<prefix>*``
    rules), and a /24 carved from the far end of the session's subnet."""
    network = ipaddress.IPv4Network(SUBNET)
    base = network.network_address + network.num_addresses - 256 * (index + 1)
    return ServerProcess(
        data_dir=data_dir,
        instance=f"{INSTANCE[:8]}{tag}"[:12],
        iface_prefix=f"q{tag[0]}{IFACE_PREFIX}"[:6],
        subnet=f"{base}/24",
        host="127.0.0.1",
        **options,  # type: ignore[arg-type]
    )


def runtime_double(root: Path, script: str) -> Path:
    """``root/bin/runc``: a bash test double of the real runc from ``script``, a template with
    ``{real}`` (the real binary) and ``{flag}`` (``root/fail-run``: the double misbehaves while
    it exists). Named like the runtime it stands for, so the server treats it as runc."""
    real = shutil.which("runc")
    assert real is not None
    (root / "bin").mkdir(exist_ok=True)
    double = root / "bin" / "runc"
    double.write_text(script.format(flag=root / "fail-run", real=real))
    double.chmod(0o755)
    return double


@contextlib.contextmanager
def serving(server: ServerProcess) -> Iterator[ServerProcess]:
    """``server`` started, and on the way out its sandboxes deleted and the server stopped."""
    server.start()
    try:
        yield server
    finally:
        server.delete_everything()
        server.stop()
