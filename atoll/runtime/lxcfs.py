"""LXCFS: ``/proc/meminfo``, ``cpuinfo``, ``stat``, ``uptime`` ... as the reading process's
cgroup sees them, so ``free`` and ``top`` in an OCI sandbox show its own limits, not the host's.

One ``lxcfs`` process per server instance, mounted on ``/run/atoll/<instance>/lxcfs``; the OCI
backend binds its files over ``/proc/...`` in each sandbox (``oci_config``). It outlives a
server restart while sandboxes use it (their bind mounts point at this FUSE connection: a new
lxcfs could not serve them), so start-up adopts a live one and replaces only a dead one.
Without lxcfs installed, sandboxes simply see the host's figures (logged once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from atoll.runtime import overlay, reaping

log = logging.getLogger("atoll.lxcfs")

# what lxcfs virtualises and Atoll binds (loadavg needs lxcfs's own sampling: left out)
PROC_FILES = ("meminfo", "cpuinfo", "stat", "uptime", "swaps", "diskstats")
MOUNT_NAME = "lxcfs"
PID_NAME = "lxcfs.pid"


def mount_dir(run_dir: Path) -> Path:
    return run_dir / MOUNT_NAME


def binds(run_dir: Path) -> list[tuple[Path, str]]:
    """(host file, path inside) for each virtualised file, or none when lxcfs is not serving."""
    root = mount_dir(run_dir)
    try:
        if not (root / "proc" / "meminfo").is_file():
            return []
    except OSError:  # ENOTCONN: a dead FUSE daemon's mount
        return []
    return [(root / "proc" / name, f"/proc/{name}") for name in PROC_FILES]


def _pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / PID_NAME).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if cmdline.startswith(b"lxcfs\0") else None


def _parent(pid: int) -> int | None:
    """The catatonit that runs lxcfs ``pid``, if it is one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        name = Path(f"/proc/{parent}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return parent if name == "catatonit" else None


def _healthy(run_dir: Path) -> bool:
    return _pid(run_dir) is not None and bool(binds(run_dir))


async def start(run_dir: Path, *, timeout_s: float = 5.0) -> bool:
    """Serve (or adopt) this instance's lxcfs; False when it is unavailable on this host."""
    if _healthy(run_dir):
        log.info("lxcfs: adopted the running one")
        return True
    await stop(run_dir)  # a dead one's stale mount and pid file
    binary, reaper = shutil.which("lxcfs"), shutil.which("catatonit")
    if binary is None or reaper is None:
        log.warning("lxcfs or catatonit missing: sandboxes' /proc/meminfo shows the host (setup-host.sh)")
        return False
    mount_dir(run_dir).mkdir(parents=True, exist_ok=True)
    # Paths through a descriptor of run_dir: the daemon's command line names no instance state
    # (it is a long-lived service, not a helper a request left behind). Its own session: it
    # outlives the server while sandboxes use it (see the module doc). Under catatonit, a
    # subreaper: lxcfs forks into sandboxes' pid namespaces to read their processes, and the
    # orphans that leaves would otherwise be zombies of the server (itself a subreaper).
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    here = f"/proc/self/fd/{fd}"
    argv = ["catatonit", "--", "lxcfs", "--enable-cfs", "-p", f"{here}/{PID_NAME}", f"{here}/{MOUNT_NAME}"]
    try:
        os.set_inheritable(fd, True)
        null = [(os.POSIX_SPAWN_OPEN, n, os.devnull, os.O_RDWR, 0) for n in (0, 1, 2)]
        os.posix_spawn(reaper, argv, dict(os.environ), file_actions=null, setsid=True)  # noqa: ASYNC221 (no wait)
    except OSError as exc:
        log.warning("lxcfs failed (%s): sandboxes' /proc/meminfo shows the host", exc)
        return False
    finally:
        os.close(fd)
    for _ in range(int(timeout_s / 0.02)):
        if _healthy(run_dir):
            return True
        await asyncio.sleep(0.02)
    log.warning("lxcfs did not come up: sandboxes' /proc/meminfo shows the host")
    await stop(run_dir)
    return False


async def stop(run_dir: Path, *, timeout_s: float = 5.0) -> None:
    """End this instance's lxcfs and remove its mount (lazily if busy)."""
    pid = _pid(run_dir)
    if pid is not None:
        parent = _parent(pid)  # its catatonit: our child when this server started it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        await reaping.exited(pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # no-op on an exited one
        if parent is not None:  # it exits with lxcfs
            await reaping.reap_when_exits(parent, timeout=timeout_s)
    with contextlib.suppress(OSError):
        overlay.unmount(mount_dir(run_dir))
    with contextlib.suppress(FileNotFoundError):
        (run_dir / PID_NAME).unlink()


async def stop_if_unused(run_dir: Path) -> None:
    """At a clean shutdown: end lxcfs unless an OCI sandbox still runs (they outlive the server
    and are adopted by the next one, with this lxcfs)."""
    for runtime in ("runc", "crun"):  # both keep a directory per container in their state root
        state = run_dir / runtime
        if state.is_dir() and any(entry.is_dir() for entry in state.iterdir()):
            log.info("lxcfs left running: %s sandboxes still use it", runtime)
            return
    await stop(run_dir)
