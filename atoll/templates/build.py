"""What every system template recipe shares: progress reporting, a Debian root filesystem from
mmdebstrap with its phases mapped onto a share of the bar, and the staging directory a build
writes into and renames into place (so a crash never leaves a half-built template that looks
finished, and two builders of one template never write into the same directory)."""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from atoll.templates.registry import TemplateRegistry

ProgressCallback = Callable[[float, str], None]

EXCLUDED_PATHS = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
# mmdebstrap's own phase lines, in order, with the share of its run they start at
MMDEBSTRAP_PHASES = (
    ("I: chroot architecture", 0.02, "resolving packages"),
    ("I: downloading packages", 0.10, "downloading packages"),
    ("I: extracting archives", 0.35, "extracting archives"),
    ("I: installing essential packages", 0.50, "installing essential packages"),
    ("I: installing remaining packages", 0.75, "installing packages"),
    ("I: running --customize-hook", 0.95, "cleaning up"),
    ("I: success", 1.0, "base system installed"),
)
STDERR_TAIL_LINES = 30
CANCEL_POLL_S = 0.5
# set (by a server running a build in a thread) to stop the build: its running step is
# terminated and the build raises BuildCancelled; the thread's context carries it
cancel_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "atoll_template_build_cancel", default=None
)


class BuildError(RuntimeError):
    """A template build failed; the message says which step and ends with its output's tail."""


class BuildCancelled(BuildError):
    """The build was asked to stop (the server is shutting down)."""


def check_cancelled() -> None:
    event = cancel_event.get()
    if event is not None and event.is_set():
        raise BuildCancelled("the template build was cancelled")


def ignore_progress(fraction: float, phase: str) -> None:
    del fraction, phase


def scaled(report: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """``report`` for one step of a build that spans [start, end] of the whole bar."""
    return lambda fraction, phase: report(start + (end - start) * min(max(fraction, 0.0), 1.0), phase)


def mmdebstrap_phase(line: str) -> tuple[float, str] | None:
    """The (fraction, phase) an mmdebstrap stderr line starts, if it starts one."""
    for marker, fraction, phase in MMDEBSTRAP_PHASES:
        if line.startswith(marker):
            return fraction, phase
    return None


def mmdebstrap_argv(rootfs: Path, packages: Sequence[str], *, suite: str = "bookworm") -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDED_PATHS],
        '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
        suite,
        str(rootfs),
    ]


def run_mmdebstrap(rootfs: Path, packages: Sequence[str], report: ProgressCallback) -> None:
    """A minbase Debian with ``packages`` at ``rootfs``, reporting mmdebstrap's phases."""
    report(0.0, "starting mmdebstrap")
    run_logged(mmdebstrap_argv(rootfs, packages), "mmdebstrap", on_line=_phases(report))
    # the image's own resolv.conf/hosts are replaced by bind mounts; make sure the targets exist
    for name in ("resolv.conf", "hosts", "hostname"):
        (rootfs / "etc" / name).touch()


def _phases(report: ProgressCallback) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        found = mmdebstrap_phase(line)
        if found is not None:
            report(*found)

    return on_line


def run_logged(
    argv: Sequence[str],
    what: str,
    *,
    on_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run ``argv`` with its output (both streams) fed line by line to ``on_line``; on failure
    raise BuildError naming ``what`` with the output's tail."""
    check_cancelled()
    tail: list[str] = []
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        cwd=cwd,
        env=env,
        start_new_session=True,  # its own process group, so a cancel stops its children too
    ) as proc:
        assert proc.stdout is not None
        event = cancel_event.get()
        if event is not None:
            threading.Thread(target=_terminate_on, args=(event, proc), daemon=True).start()
        for line in proc.stdout:
            tail = [*tail[-STDERR_TAIL_LINES:], line.rstrip()]
            if on_line is not None:
                on_line(line)
    check_cancelled()
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _terminate_on(event: threading.Event, proc: subprocess.Popen[str]) -> None:
    while proc.poll() is None:
        if event.wait(CANCEL_POLL_S):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            return


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Held while building ``target``: the CLI and a server never build one template at once
    (the second waits, then finds it built)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                check_cancelled()
                time.sleep(CANCEL_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_for(target: Path) -> Iterator[Path]:
    """An empty ``<target>.building``, where a build writes before it is renamed into place;
    removed when the build fails (or is interrupted)."""
    staging = target.with_name(target.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def overlay_users(rootfs: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> int:
    """How many overlay mounts (sandboxes' root filesystems) have ``rootfs`` as a lower layer."""
    count = 0
    wanted = rootfs.resolve()
    for line in mountinfo.read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields = after.split()
        if len(fields) < 3 or fields[0] != "overlay" or len(before.split()) < 5:
            continue
        mount_point = Path(before.split()[4].replace("\\040", " "))
        for option in fields[2].split(","):
            if not option.startswith("lowerdir="):
                continue
            # layers named relative to the mount's directory (overlay.mount_overlay) are links
            layers = [mount_point.parent / name for name in option.removeprefix("lowerdir=").split(":")]
            if str(rootfs) in map(str, layers) or any(_same(layer, wanted) for layer in layers):
                count += 1
    return count


def _same(layer: Path, wanted: Path) -> bool:
    try:
        return layer.resolve() == wanted
    except OSError:
        return False


def ensure_unused(target: Path) -> None:
    """Refuse to replace a template sandboxes run on: its files would vanish under them."""
    users = overlay_users(target / "rootfs")
    if users:
        raise BuildError(
            f"{users} sandbox(es) run on {target / 'rootfs'}: delete them (or stop their server) "
            "before rebuilding the template"
        )


def swap_into_place(staging: Path, target: Path) -> None:
    ensure_unused(target)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def content_hash(recipe: Sequence[object], root: Path, files: Iterable[Path | str]) -> str:
    """A template's build hash: its recipe (JSON) and ``files`` under ``root``, by name and
    content. It is recorded in ``template.json``; a build is skipped while it matches."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(recipe)).encode())
    for relative in files:
        digest.update(f"\0{relative}\0".encode())
        digest.update((root / relative).read_bytes())
    return "sha256:" + digest.hexdigest()


def recorded_hash(registry: TemplateRegistry, name: str) -> str | None:
    """The build hash of the template on disk (None when there is none, or it predates hashes)."""
    if registry.get(name) is None:
        return None
    try:
        data = json.loads((registry.dir_for(name) / "template.json").read_text())
    except (OSError, ValueError):
        return None
    value = data.get("build_hash")
    return value if isinstance(value, str) else None
