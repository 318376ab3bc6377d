"""The desktop's processes: websockify (the "novnc" process: it needs no display) and the XFCE4
session (its bus and Xfconf daemon) start beside Xvfb; once Xvfb answers (``-displayfd``) at its
size, the session is told to start its window manager and x11vnc starts; each is waited for,
then watched: one that exits is started again (after a short back-off when it keeps crashing).
At the service's start the first three were started by ``early.start`` before this module was
imported, and are adopted here; every later start is this module's. Readiness is told where a
process can tell (Xvfb's ``-displayfd``) and polled otherwise; the session is told, through a
pipe it reads, when the display is up and when its window manager is (it starts its panel
and desktop after it: ``session.sh``).

Xvfb starts with a framebuffer of at least ``early.FRAMEBUFFER`` and is set to the asked size by
RandR, so a later resize up to the framebuffer is live: the windows stay. Only a size beyond it
starts everything again at that size. Each runs in its own session (process group), so a stop
or restart ends what it spawned too (the session's panel and desktop).

Status is ``running`` when all run, ``stopped`` when none does, ``degraded`` otherwise; every
change bumps ``version`` and wakes ``changed`` (the SSE status stream waits on it). The log
(``desktop.log``) has each process's start and readiness in seconds since the sandbox's PID 1."""

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

from . import early
from .config import MAX_LOG_FILE_BYTES, Settings
from .early import VNC_PORT, WEBSOCKIFY_PORT, Early, since_pid1
from .processes import Adopted, Adoption, Pipes, adopt, notified, reap
from .x11 import X11, DisplayUnavailableError

log = logging.getLogger(__name__)

NAMES = ("xvfb", "xfce4", "x11vnc", "novnc")
READY_TIMEOUT_S = 15.0
READY_POLL_S = 0.02
UNTOLD_POLL_S = 0.25  # a process that tells it is ready is still checked this often
WATCH_INTERVAL_S = 0.5
STOP_GRACE_S = 3.0
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0  # running this long resets the crash back-off


@dataclass
class Managed:
    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[], Awaitable[bool]]
    stdout_log: Path
    stderr_log: Path
    # the option that gives it a descriptor it writes to once it is ready (Xvfb's -displayfd):
    # readiness told instead of polled for
    notify_option: str | None = None
    # descriptors added to its arguments, closed by the service once the display is up (after
    # the screen's size is set) and once it is ready itself (the session waits for the first
    # to start its window manager, for the second to start its panel): told, not polled for
    after_display: bool = False
    tell_ready: bool = False
    proc: asyncio.subprocess.Process | Adopted | None = None
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
        self.fb_width, self.fb_height = early.framebuffer(self.width, self.height)
        self.version = 0
        self.changed = asyncio.Event()
        self.started = False  # the first start-up has finished
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._display = asyncio.Event()  # Xvfb answers at the asked size: the session may start
        self._display.set()  # a restart of the session alone needs no wait
        number = settings.display.lstrip(":").split(".")[0] or "0"
        self._x_socket = Path(f"/tmp/.X11-unix/X{number}")
        self.env = {**os.environ, "DISPLAY": settings.display}
        self.processes = {name: self._managed(name) for name in NAMES}

    def _managed(self, name: str) -> Managed:
        argv, ready = {
            "xvfb": (self._xvfb_argv, self._xvfb_ready),
            "xfce4": (early.session_argv, self._wm_ready),
            "x11vnc": (self._x11vnc_argv, lambda: _port_open(VNC_PORT)),
            "novnc": (early.websockify_argv, lambda: _port_open(WEBSOCKIFY_PORT)),
        }[name]
        logs = self.settings.run_dir
        managed = Managed(name, argv, ready, logs / f"{name}.out.log", logs / f"{name}.err.log")
        managed.notify_option = "-displayfd" if name == "xvfb" else None
        managed.after_display = managed.tell_ready = name == "xfce4"
        return managed

    def _xvfb_argv(self) -> list[str]:
        return early.xvfb_argv(self.settings.display, self.fb_width, self.fb_height, self.settings.glx)

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

    async def start(self, started: Early | None = None) -> None:
        """Start the desktop; adopt what ``started`` (``early.start``) holds already."""
        async with self._lock:
            await self._start_all(started)
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
            self.fb_width, self.fb_height = early.framebuffer(width, height)
            for managed in reversed(self.processes.values()):
                await self._stop(managed)
            await asyncio.to_thread(self.x11.close)
            await self._start_all()
            return False

    async def _start_all(self, started: Early | None = None) -> None:
        xvfb, xfce4, x11vnc, novnc = (self.processes[name] for name in NAMES)
        self._display.clear()
        adopted = adopt(started)
        # beside Xvfb: websockify (it needs no display: it connects to x11vnc per viewer) and the
        # session, whose bus and Xfconf daemon start meanwhile (its window manager waits for
        # the display, told by a pipe, below)
        beside = [
            asyncio.create_task(self._start(novnc, adopted.get("novnc"))),
            asyncio.create_task(self._start(xfce4, adopted.get("xfce4"))),
        ]
        try:
            try:
                await self._start(xvfb, adopted.get("xvfb"))
                await self._set_size()
            finally:
                self._display.set()
                if started is not None and started.sizer > 0:
                    await asyncio.to_thread(reap, started.sizer)
            await asyncio.gather(self._start(x11vnc), *beside)
        except BaseException:
            for task in beside:
                task.cancel()
            for task in beside:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            raise

    async def _set_size(self) -> bool:
        """The screen's size within the framebuffer, by RandR over the service's connection
        (``X11.set_size``: what ``xrandr --fb`` does, without a process on the way to ready)."""
        if (self.width, self.height) == (self.fb_width, self.fb_height):
            return True
        try:
            size = await asyncio.to_thread(self.x11.size)
            if size != (self.width, self.height):  # (early.start's sizer has set it)
                size = await asyncio.to_thread(self.x11.set_size, self.width, self.height)
        except DisplayUnavailableError:
            return False
        if size != (self.width, self.height):
            log.warning("RandR left the screen at %sx%s, not %sx%s", *size, self.width, self.height)
            return False
        return True

    async def _start(self, managed: Managed, adopted: Adoption | None = None) -> None:
        pipes = Pipes()
        try:
            if adopted is not None:  # started by early.start: its pipes are ours to close
                managed.proc, notice = adopted.process, adopted.notice
                pipes.ours += [fd for fd in (adopted.notice, adopted.tell) if fd >= 0]
                await self._started(managed, adopted.spawned_at)
                await self._wait_ready(managed, notice)
                return
            _kill_group(managed)  # leftovers of a previous run (e.g. the session's panel)
            for path in (managed.stdout_log, managed.stderr_log):
                if path.exists() and path.stat().st_size > MAX_LOG_FILE_BYTES:
                    path.write_bytes(b"")
            argv, notice, display_up = managed.argv(), -1, -1
            if managed.notify_option is not None:
                notice, theirs = pipes.from_child()
                argv += [managed.notify_option, str(theirs)]
            if managed.after_display:
                theirs, display_up = pipes.to_child()
                argv.append(str(theirs))
            if managed.tell_ready:
                theirs, _ = pipes.to_child()  # ours is closed with the rest, after ready
                argv.append(str(theirs))
            with managed.stdout_log.open("ab") as out, managed.stderr_log.open("ab") as err:
                managed.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env,
                    cwd=self.env.get("HOME", "/"),
                    start_new_session=True,
                    pass_fds=pipes.child,
                )
            pipes.close_child()  # its copies are the only ones: EOF on our side when it dies
            await self._started(managed)
            if display_up >= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._display.wait(), READY_TIMEOUT_S)
                pipes.close(display_up)
            await self._wait_ready(managed, notice)
        finally:
            pipes.close_all()  # the ready pipe among them: the process is told

    async def _started(self, managed: Managed, spawned_at: float | None = None) -> None:
        """Book-keeping of a start; ``spawned_at`` (``since_pid1``) for an adopted process."""
        assert managed.proc is not None
        now = since_pid1()
        at = now if spawned_at is None else spawned_at
        managed.started_at = time.monotonic() - (now - at)
        managed.extra["pgid"] = managed.proc.pid  # a session of its own: its group
        log.info("%s started at %.2f s", managed.name, at)
        self._bump()

    async def _wait_ready(self, managed: Managed, notice: int) -> None:
        """Until ``managed.ready()``: checked when the process says so on ``notice`` (if it has
        one; also every UNTOLD_POLL_S, should it never say), else every READY_POLL_S."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        told = asyncio.ensure_future(notified(notice, READY_TIMEOUT_S)) if notice >= 0 else None
        try:
            while time.monotonic() < deadline and managed.running:
                if told is not None and not told.done():
                    await asyncio.wait({told}, timeout=UNTOLD_POLL_S)
                if await managed.ready():
                    took = time.monotonic() - managed.started_at
                    log.info("%s ready in %.2f s (at %.2f s)", managed.name, took, since_pid1())
                    said = told.result() if told is not None and told.done() else b""
                    if said.startswith(b"up "):  # early.SIZER's line: when it was
                        log.info("%s: the display was up at %s s", managed.name, said[3:].decode().strip())
                    return
                if told is None or told.done():
                    await asyncio.sleep(READY_POLL_S)
        finally:
            if told is not None:
                told.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await told
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
