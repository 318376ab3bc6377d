"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries (installed by
scripts/setup-host.sh), a fresh cluster under /var/tmp made with ``initdb``, listening only on a
unix socket in its own directory (no TCP port, no system service), owned by the ``postgres``
user because the server refuses to run as root. Durability is off: a test database is thrown
away, and fsyncs would be most of its time."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INSTANCE = os.environ.get("ATOLL_TEST_INSTANCE", "test")
USER = "postgres"  # the server runs as this user (Debian's package creates it)
SUPERUSER = "atoll"  # the role the tests connect as (trust on the socket: only root and postgres reach it)


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's ``name`` (initdb and pg_ctl are not on PATH on Debian)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    if not found:
        raise FileNotFoundError(f"no {name}: install Debian's postgresql (scripts/setup-host.sh)")
    return found[-1]


def _major(path: str) -> int:
    return int(Path(path).parts[4])


def available() -> bool:
    try:
        pg_bin("initdb")
    except FileNotFoundError:
        return False
    return os.geteuid() == 0


def _as_postgres(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", USER, "--", *argv], capture_output=True, text=True, timeout=timeout, check=True
    )


@dataclass
class PostgresServer:
    root: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"atoll-test-{INSTANCE}-pg-", dir="/var/tmp"))
    )

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL Atoll takes (``--database-url``): psycopg 3 over the unix socket."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def start(self) -> None:
        # the socket's directory: its owner and group root only, so that root with no capability
        # (an API replica, tests/_support/server.py) reaches the socket as root does
        shutil.chown(self.root, USER, "root")
        self.root.chmod(0o710)
        _as_postgres(
            pg_bin("initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=300 -c shared_buffers=32MB",
            ]
        )
        _as_postgres(
            pg_bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = _as_postgres(
            pg_bin("psql"), "-h", str(self.socket_dir), "-U", SUPERUSER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip
        return done.stdout.strip()

    def stop(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            try:
                _as_postgres(pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
            except subprocess.SubprocessError:  # not stopped by its own tool: by its pid
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pid = int(pid_file.read_text().split()[0])
                    # only that very server: a stale pid may be another process's by now
                    if str(self.data_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale() -> None:
    """Clusters an earlier run of this instance left (a killed pytest): stopped and removed."""
    for root in Path("/var/tmp").glob(f"atoll-test-{INSTANCE}-pg-*"):
        PostgresServer(root).stop()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    remove_stale()
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def wait_for(predicate: object, timeout_s: float, interval_s: float = 0.2) -> bool:
    """Polls ``predicate()`` until true or ``timeout_s``; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval_s)
    return False
