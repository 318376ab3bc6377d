"""Settings of the desktop service, read once from the environment at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .early import DEFAULT_HEIGHT, DEFAULT_WIDTH

PACKAGE_DIR = Path(__file__).resolve().parent

MIN_WIDTH, MAX_WIDTH = 320, 7680
MIN_HEIGHT, MAX_HEIGHT = 320, 4320
NOVNC_DIR = Path("/usr/share/novnc")  # Debian's novnc package
# Request bounds.
MAX_BODY_BYTES = 256 << 10
MAX_TYPE_CHARS = 50_000
MAX_HOTKEY_KEYS = 10
MAX_KEY_CHARS = 64
MAX_SCROLL = 100
MAX_LOG_TAIL_BYTES = 64 << 10  # what /api/process/{name}/logs|errors return: the end of the log
MAX_LOG_FILE_BYTES = 4 << 20  # a process's log is truncated when it grows beyond this
MAX_RECORDINGS = 32  # kept on disk; the oldest stopped one goes when another starts
MAX_RECORDING_S = 3600  # a recording left running stops itself after this
RECORDING_FPS = 15


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    display: str
    width: int
    height: int
    glx: bool  # Xvfb's GLX extension (OpenGL for X clients); off unless asked for
    run_dir: Path  # logs of the supervised processes
    recordings_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        run_dir = Path(env.get("ATOLL_DESKTOP_RUN_DIR") or "/run/atoll-desktop")
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        recordings = run_dir / "recordings"
        recordings.mkdir(exist_ok=True)
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=int(env.get("PORT", "6080")),
            display=env.get("DISPLAY") or ":0",
            width=int(env.get("ATOLL_DESKTOP_WIDTH", DEFAULT_WIDTH)),
            height=int(env.get("ATOLL_DESKTOP_HEIGHT", DEFAULT_HEIGHT)),
            glx=env.get("ATOLL_DESKTOP_GLX", "") == "1",
            run_dir=run_dir,
            recordings_dir=recordings,
        )
