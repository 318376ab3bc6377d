"""The desktop's processes: Xvfb first, waited for (its socket answers), then the XFCE4 session,
x11vnc and websockify (the "novnc" process) side by side (each needs only the display; the
session's window manager takes the longest, 9 s of a 14 s start under gVisor, and the other two
no longer wait behind it), each waited for; then watched: one that exits is started again (after
a short back-off when it keeps crashing).

Xvfb starts with a framebuffer of at least ``FRAMEBUFFER`` and is set to the asked size by RandR
(``xrandr --fb``), so a later resize up to the framebuffer is live: the windows stay. Only a size
beyond it starts everything again at that size. Each runs in its own
process group, so a stop or restart ends what it spawned too (the session's panel and desktop).

Status is ``running`` when all run, ``stopped`` when none does, ``degraded`` otherwise; every
change bumps ``version`` and wakes ``changed`` (the SSE status stream waits on it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEPTH, MAX_LOG_FILE_BYTES, PACKAGE_DIR, VNC_PORT, WEBSOCKIFY_PORT, Settings
from .x11 import X11, DisplayUnavailableError

log = logging.getLogger(__name__)

NAMES = ("xvfb", "xfce4", "x11vnc", "novnc")
READY_TIMEOUT_S = 15.0
READY_POLL_S = 0.05
WATCH_INTERVAL_S = 0.5
STOP_GRACE_S = 3.0
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0  # running this long resets the crash back-off
# Xvfb's framebuffer (RandR cannot grow a screen beyond it): its memory is only what is drawn on
FRAMEBUFFER = (3840, 2160)
XRANDR_TIMEOUT_S = 10.0


@dataclass
class Managed:
    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[], Awaitable[bool]]
    stdout_log: Path
    stderr_log: Path
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    crashes: int = 0
    not_before: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def info(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": self.name,
            "running": self.running,
            "stdout_log": str(self.stdout_log),
            "stderr_log": str(self.stderr_log),
        }
        if self.running and self.proc is not None:
            item["pid"] = self.proc.pid
        return item


class Supervisor:
    def __init__(self, settings: Settings, x11: X11) -> None:
        self.settings = settings
        self.x11 = x11
        self.width, self.height = settings.width, settings.height
        self.fb_width, self.fb_height = _framebuffer(self.width, self.height)
        self.version = 0
        self.changed = asyncio.Event()
        self.started = False  # the first start-up has finished
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        number = settings.display.lstrip(":").split(".")[0] or "0"
        self._x_socket = Path(f"/tmp/.X11-unix/X{number}")
        self.env = {**os.environ, "DISPLAY": settings.display}
        self.processes = {name: self._managed(name) for name in NAMES}

    def _managed(self, name: str) -> Managed:
        argv, ready = {
            "xvfb": (self._xvfb_argv, self._xvfb_ready),
            "xfce4": (
                lambda: ["dbus-run-session", "--", "sh", str(PACKAGE_DIR / "session.sh")],
                self._wm_ready,
            ),
            "x11vnc": (self._x11vnc_argv, lambda: _port_open(VNC_PORT)),
            "novnc": (
                lambda: ["websockify", f"127.0.0.1:{WEBSOCKIFY_PORT}", f"127.0.0.1:{VNC_PORT}"],
                lambda: _port_open(WEBSOCKIFY_PORT),
            ),
        }[name]
        logs = self.settings.run_dir
        return Managed(name, argv, ready, logs / f"{name}.out.log", logs / f"{name}.err.log")

    def _xvfb_argv(self) -> list[str]:
        screen = f"{self.fb_width}x{self.fb_height}x{DEPTH}"
        # -ac: any local client may connect (the sandbox is the boundary); no TCP listener
        return [
            "Xvfb",
            self.settings.display,
            "-screen",
            "0",
            screen,
            "-ac",
            "-nolisten",
            "tcp",
            "+extension",
            "RANDR",
        ]

    def _x11vnc_argv(self) -> list[str]:
        return [
            "x11vnc", "-display", self.settings.display, "-rfbport", str(VNC_PORT), "-localhost",
            "-nopw", "-forever", "-shared", "-noxdamage", "-xrandr", "newfbsize", "-quiet",
        ]  # fmt: skip

    async def _xvfb_ready(self) -> bool:
        if not self._x_socket.exists():
            return False
        try:
            await asyncio.to_thread(self.x11.size)
        except DisplayUnavailableError:
            return False
        return True

    async def _wm_ready(self) -> bool:
        try:
            return await asyncio.to_thread(self.x11.window_manager_running)
        except DisplayUnavailableError:
            return False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            await self._start_all()
        self.started = True
        self._bump()
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        async with self._lock:
            for managed in reversed(self.processes.values()):
                await self._stop(managed)

    async def restart(self, name: str) -> dict[str, Any]:
        managed = self.processes[name]
        async with self._lock:
            await self._stop(managed)
            managed.crashes = 0
            await self._start(managed)
        return managed.info()

    async def resize(self, width: int, height: int) -> bool:
        """Set the screen to ``width`` x ``height``: live by RandR when it fits the framebuffer
        (True: the windows stay), else everything starts again at that size (False)."""
        async with self._lock:
            self.width, self.height = width, height
            if width <= self.fb_width and height <= self.fb_height and self.processes["xvfb"].running:
                if await self._set_size():
                    self._bump()
                    return True
            self.fb_width, self.fb_height = _framebuffer(width, height)
            for managed in reversed(self.processes.values()):
                await self._stop(managed)
            await asyncio.to_thread(self.x11.close)
            await self._start_all()
            return False

    async def _start_all(self) -> None:
        xvfb, *rest = self.processes.values()
        await self._start(xvfb)
        await self._set_size()
        await asyncio.gather(*(self._start(managed) for managed in rest))

    async def _set_size(self) -> bool:
        """``xrandr --fb``: the screen's size within the framebuffer. Xvfb has one fixed mode (the
        framebuffer's), so xrandr turns its CRTC off to shrink the screen and reports an error
        turning it back on: the root window's size is what says whether it worked."""
        if (self.width, self.height) == (self.fb_width, self.fb_height):
            return True
        argv = ["xrandr", "--fb", f"{self.width}x{self.height}"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=self.env
        )
        try:
            await asyncio.wait_for(proc.wait(), XRANDR_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        try:
            size = await asyncio.to_thread(self.x11.size)
        except DisplayUnavailableError:
            return False
        if size != (self.width, self.height):
            log.warning("xrandr left the screen at %sx%s, not %sx%s", *size, self.width, self.height)
            return False
        return True

    async def _start(self, managed: Managed) -> None:
        _kill_group(managed)  # leftovers of a previous run (e.g. the session's panel)
        for path in (managed.stdout_log, managed.stderr_log):
            if path.exists() and path.stat().st_size > MAX_LOG_FILE_BYTES:
                path.write_bytes(b"")
        with managed.stdout_log.open("ab") as out, managed.stderr_log.open("ab") as err:
            managed.proc = await asyncio.create_subprocess_exec(
                *managed.argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.env.get("HOME", "/"),
                start_new_session=True,
            )
        managed.started_at = time.monotonic()
        managed.extra["pgid"] = managed.proc.pid
        self._bump()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and managed.running:
            if await managed.ready():
                log.info("%s ready in %.2f s", managed.name, time.monotonic() - managed.started_at)
                return
            await asyncio.sleep(READY_POLL_S)
        log.warning(
            "%s is not ready after %.0fs (running: %s)", managed.name, READY_TIMEOUT_S, managed.running
        )

    async def _stop(self, managed: Managed) -> None:
        proc = managed.proc
        if proc is None:
            return
        _kill_group(managed, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            _kill_group(managed, signal.SIGKILL)
            await proc.wait()
        _kill_group(managed, signal.SIGKILL)
        self._bump()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            async with self._lock:
                for managed in self.processes.values():
                    if managed.running:
                        if time.monotonic() - managed.started_at > STABLE_S:
                            managed.crashes = 0
                        continue
                    if time.monotonic() < managed.not_before:
                        continue
                    managed.crashes += 1
                    managed.not_before = time.monotonic() + min(BACKOFF_MAX_S, 0.5 * 2**managed.crashes)
                    log.warning("%s exited; starting it again", managed.name)
                    self._bump()
                    await self._start(managed)

    def _bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        items = [managed.info() for managed in self.processes.values()]
        running = sum(1 for item in items if item["running"])
        overall = "running" if running == len(items) else "stopped" if running == 0 else "degraded"
        return {"status": overall, "items": items, "running": running, "total": len(items)}

    @property
    def healthy(self) -> bool:
        return self.started and all(managed.running for managed in self.processes.values())


def _framebuffer(width: int, height: int) -> tuple[int, int]:
    return max(width, FRAMEBUFFER[0]), max(height, FRAMEBUFFER[1])


def _kill_group(managed: Managed, sig: int = signal.SIGKILL) -> None:
    pgid = managed.extra.get("pgid")
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


async def _port_open(port: int) -> bool:
    def probe() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return await asyncio.to_thread(probe)
