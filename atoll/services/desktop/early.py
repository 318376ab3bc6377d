"""The desktop's first processes, started before the service imports anything but ``os``.

Under gVisor every module import costs file lookups the sandbox's kernel makes slow: asyncio,
logging and python-xlib took 0.7-0.8 s to import, all of it before Xvfb was started. So
``__main__`` starts Xvfb, the session and websockify from here first (``os.posix_spawnp``, each
in a session of its own, as the supervisor starts them) and the supervisor adopts them once it
is imported. A short shell (the "sizer") waits for Xvfb (its ``-displayfd``), sets the screen's
size (``xrandr --fb``: Xvfb starts at its framebuffer's size), then tells the supervisor (it
writes a line) and the session (it exits, closing the session's first descriptor: see
``session.sh``). Later starts (a restart, a resize beyond the framebuffer) are the supervisor's.

Only ``os`` here, and no dataclasses: this runs before the imports it is there to overlap."""

from __future__ import annotations

import os
import time

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WIDTH = 1440
DEFAULT_HEIGHT = 900
DEPTH = 24
# Xvfb's framebuffer (RandR cannot grow a screen beyond it): its memory is only what is drawn on
FRAMEBUFFER = (3840, 2160)
VNC_PORT = 5900  # x11vnc, loopback only
WEBSOCKIFY_PORT = 6081  # websockify (the "novnc" process), loopback only; the service proxies it
# $1: the -displayfd pipe, $2: the supervisor's, $3: the screen's size if not the framebuffer's;
# it says when it was (/proc/uptime: since the sandbox's boot under gVisor, since the container's
# start under LXCFS, about since_pid1 both; read by the shell itself, no process on the way)
SIZER = (
    'read -r _ <&"$1" && { [ -z "$3" ] || xrandr --fb "$3" >/dev/null 2>&1; '
    'read -r uptime _ </proc/uptime; echo "up $uptime" >&"$2"; }'
)


def framebuffer(width: int, height: int) -> tuple[int, int]:
    return max(width, FRAMEBUFFER[0]), max(height, FRAMEBUFFER[1])


def xvfb_argv(display: str, fb_width: int, fb_height: int, glx: bool) -> list[str]:
    # -ac: any local client may connect (the sandbox is the boundary); no TCP listener
    argv = ["Xvfb", display, "-screen", "0", f"{fb_width}x{fb_height}x{DEPTH}", "-ac"]
    argv += ["-nolisten", "tcp", "+extension", "RANDR"]
    if not glx:
        # GLX loads Mesa's software driver (swrast_dri, with a 117 MB libLLVM) at Xvfb's start,
        # before it answers: a third to a half of its start under gVisor (docs/desktop.md)
        argv += ["-extension", "GLX"]
    return argv


def session_argv() -> list[str]:
    return ["dbus-run-session", "--", "sh", os.path.join(PACKAGE_DIR, "session.sh")]


def websockify_argv() -> list[str]:
    return ["websockify", f"127.0.0.1:{WEBSOCKIFY_PORT}", f"127.0.0.1:{VNC_PORT}"]


def since_pid1() -> float:
    """Seconds since the sandbox's first process (PID 1) started: the desktop log's timeline.
    The boot clock is what /proc's start times count in (under gVisor too; /proc/uptime may be
    a container's own, from LXCFS)."""
    now_s = time.clock_gettime(time.CLOCK_BOOTTIME)
    return now_s - _PID1_START_S if _PID1_START_S is not None else 0.0


def _pid1_start_s() -> float | None:
    try:
        with open("/proc/1/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


_PID1_START_S = _pid1_start_s()


class Early:
    """What was started: ``pids`` by process name and when (``since_pid1``), ``notice`` (the
    sizer's line: the display is up at its size), ``wm_ready`` (the session's second
    descriptor, to close once its window manager is up) and ``sizer`` (a pid to reap)."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.spawned_at: dict[str, float] = {}
        self.notice = -1
        self.wm_ready = -1
        self.sizer = -1


def start(env: dict[str, str]) -> Early:
    """Xvfb, the session and websockify, as the service's environment asks (the variables
    ``config.Settings`` reads); logs as the supervisor names them."""
    display = env.get("DISPLAY") or ":0"
    width = int(env.get("ATOLL_DESKTOP_WIDTH") or DEFAULT_WIDTH)
    height = int(env.get("ATOLL_DESKTOP_HEIGHT") or DEFAULT_HEIGHT)
    fb_width, fb_height = framebuffer(width, height)
    glx = env.get("ATOLL_DESKTOP_GLX", "") == "1"
    logs = env.get("ATOLL_DESKTOP_RUN_DIR") or "/run/atoll-desktop"
    os.makedirs(logs, mode=0o755, exist_ok=True)
    child_env = {**env, "DISPLAY": display}
    early = Early()
    shown_r, shown_w = os.pipe()  # Xvfb -> sizer: -displayfd
    early.notice, notice_w = os.pipe()  # sizer -> supervisor
    go_r, go_w = os.pipe()  # sizer -> session: closed when the display is up
    told_r, early.wm_ready = os.pipe()  # supervisor -> session: closed when xfwm4 is up
    try:  # on a failure, what started is stopped: the supervisor then starts it all itself
        xvfb = [*xvfb_argv(display, fb_width, fb_height, glx), "-displayfd", str(shown_w)]
        early.pids["xvfb"] = _spawn(xvfb, child_env, logs, "xvfb", (shown_w,))
        early.spawned_at["xvfb"] = since_pid1()
        size = "" if (width, height) == (fb_width, fb_height) else f"{width}x{height}"
        sizer = ["sh", "-c", SIZER, "sizer", str(shown_r), str(notice_w), size]
        early.sizer = _spawn(sizer, child_env, logs, "sizer", (shown_r, notice_w, go_w))
        session = [*session_argv(), str(go_r), str(told_r)]
        early.pids["xfce4"] = _spawn(session, child_env, logs, "xfce4", (go_r, told_r))
        early.spawned_at["xfce4"] = since_pid1()
        early.pids["novnc"] = _spawn(websockify_argv(), child_env, logs, "novnc", ())
        early.spawned_at["novnc"] = since_pid1()
    except BaseException:
        for pid in (*early.pids.values(), early.sizer):
            if pid > 0:
                os.killpg(pid, 9)
                os.waitpid(pid, 0)
        os.close(early.notice)
        os.close(early.wm_ready)
        raise
    finally:
        for fd in (shown_r, shown_w, notice_w, go_r, go_w, told_r):
            os.close(fd)
    return early


def _spawn(argv: list[str], env: dict[str, str], logs: str, name: str, fds: tuple[int, ...]) -> int:
    """``argv`` in a session of its own (the supervisor kills process groups), in the home
    directory, output appended to ``{logs}/{name}.{out,err}.log``, with ``fds`` inherited."""
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.path.join(logs, f"{name}.out.log"), append, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, os.path.join(logs, f"{name}.err.log"), append, 0o644),
    ]
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True)
    finally:
        for fd in fds:
            os.set_inheritable(fd, False)
