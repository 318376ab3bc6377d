"""What a backend needs to know to run one sandbox: a plain value, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class BindMount:
    source: Path
    destination: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class SandboxSpec:
    sandbox_id: str
    lower_dirs: tuple[Path, ...]  # read-only template layers, top first
    sandbox_dir: Path  # holds upper/, work/, rootfs/ (the overlay), config and generated files
    vcpu: int
    memory_mib: int
    pids_limit: int
    netns_path: Path | None
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "sandbox"
    binds: tuple[BindMount, ...] = ()
    # the command the init process supervises; None means "just keep the sandbox alive"
    main_command: tuple[str, ...] | None = None
    workdir: str = "/"

    @property
    def upper_dir(self) -> Path:
        return self.sandbox_dir / "upper"

    @property
    def work_dir(self) -> Path:
        return self.sandbox_dir / "work"

    @property
    def rootfs(self) -> Path:
        return self.sandbox_dir / "rootfs"


@dataclass(frozen=True, kw_only=True)
class ExecRequest:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str = "/"
    timeout: float = 30.0
    max_output_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


class ExecSetupFailed(RuntimeError):
    """The command could not be started at all (e.g. its working directory is missing)."""


class CheckpointFailed(RuntimeError):
    """CRIU could not save or restore the sandbox; the message carries CRIU's own errors."""
