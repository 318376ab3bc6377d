"""What a backend needs to know to run one sandbox: a plain value, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# a command that could not start: its typed subclasses are in atoll._exceptions
from atoll._exceptions import ExecSetupFailed as ExecSetupFailed


@dataclass(frozen=True, kw_only=True)
class BindMount:
    source: Path
    destination: str
    read_only: bool = True


def upper_dir(sandbox_dir: Path) -> Path:
    """The overlay's upper dir: everything the sandbox changed in its root filesystem."""
    return sandbox_dir / "disk" / "upper"


def etc_dir(sandbox_dir: Path) -> Path:
    """The generated ``/etc`` files bind-mounted into the sandbox (hosts, hostname, resolv.conf)."""
    return sandbox_dir / "disk" / "etc"


@dataclass(frozen=True, kw_only=True)
class SandboxSpec:
    sandbox_id: str
    lower_dirs: tuple[Path, ...]  # read-only template layers, top first
    # holds disk/ (upper/, work/ and etc/ on the sandbox's own filesystem, see disk.py),
    # rootfs/ (the overlay), the runtime config and the checkpoint image
    sandbox_dir: Path
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
    # who the sandbox's processes run as (the image's USER; ``templates.oci``): its PID 1, and
    # so every command, terminal and main process, which inherit it
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()

    @property
    def upper_dir(self) -> Path:
        return upper_dir(self.sandbox_dir)

    @property
    def work_dir(self) -> Path:
        return self.sandbox_dir / "disk" / "work"

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


class CheckpointFailed(RuntimeError):
    """CRIU could not save or restore the sandbox; the message carries CRIU's own errors."""
