"""Settings of the service, read once from the environment at start."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Per-execution output caps: beyond them output is dropped (with a marker), never held.
MAX_LOG_BYTES = 1 << 20  # stdout + stderr text of one execution
MAX_ITEMS_BYTES = 10 << 20  # rich display items (png, html, ...) of one execution
# Request bounds.
MAX_BODY_BYTES = 4 << 20
MAX_CODE_BYTES = 1 << 20
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 64 << 10
MAX_TIMEOUT_MS = 24 * 3600 * 1000
DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_CONTEXTS = 64  # each holds a kernel process (~60-100 MiB for Python)
# After an interrupt (timeout, client gone) a kernel gets this long to go idle before it is restarted.
INTERRUPT_GRACE_S = 3.0


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    default_cwd: Path
    run_dir: Path  # private dir (0700) for kernel ipc sockets and connection files
    node: str | None  # path of the node binary; None: TypeScript contexts are unavailable
    ts_runner: Path
    eager_typescript: bool
    max_contexts: int

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        default_cwd = Path(env.get("ATOLL_CI_CWD") or _home_user())
        base = env.get("ATOLL_CI_RUN_DIR")
        if base:
            Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="atoll-ci-", dir=base or None))
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=int(env.get("PORT", "49999")),
            default_cwd=default_cwd,
            run_dir=run_dir,
            node=env.get("ATOLL_CI_NODE") or shutil.which("node"),
            ts_runner=PACKAGE_DIR / "ts_runner.js",
            eager_typescript=env.get("ATOLL_CI_EAGER_TS", "0") == "1",
            max_contexts=int(env.get("ATOLL_CI_MAX_CONTEXTS", str(DEFAULT_MAX_CONTEXTS))),
        )


def _home_user() -> str:
    # /home/user is the sandbox's workdir; on a host without it (tests) fall back to the process cwd.
    return "/home/user" if Path("/home/user").is_dir() else os.getcwd()
