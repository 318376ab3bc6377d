"""``system/desktop:v0.1.0``: a graphical Linux desktop for computer-use agents (Xvfb at
1440x900, a lean XFCE4 session, x11vnc, noVNC + websockify, xdotool, ffmpeg, a terminal and
Firefox ESR), running Atoll's desktop service (``atoll/services/desktop``) on port 6080: the noVNC
page at ``/`` and leap0's ``/api/...`` desktop endpoints.

Built like ``system/code-interpreter`` (see ``atoll.templates.code_interpreter``, whose helpers
this recipe reuses): Debian packages by mmdebstrap (no recommends), the service's pinned
``requirements.txt`` by the host's pip into a venv in the root filesystem. ``template.json``
records a hash of the recipe and the service files: a build is skipped while it matches."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from atoll.templates import build
from atoll.templates.build import (
    ProgressCallback,
    build_lock,
    content_hash,
    ensure_unused,
    ignore_progress,
    run_mmdebstrap,
    scaled,
    staging_for,
    swap_into_place,
)
from atoll.templates.code_interpreter import (
    PYTHON_VERSION,
    check_leftovers,
    copy_service,
    in_chroot,
    pip_install,
    service_files,
)
from atoll.templates.registry import BASE_ENV, Template, TemplateRegistry

NAME = "system/desktop:v0.1.0"
TEMPLATE_ID = "tpl-system-desktop-v0-1-0"
PORT = 6080
# bump when the steps below change what a build produces: cached templates are then rebuilt
RECIPE_VERSION = "2"
PACKAGES = (
    "python3", "python3-venv", "ca-certificates", "procps",
    # the display, a lean XFCE4 (window manager, panel, desktop, terminal) and its session bus
    "xvfb", "x11-xserver-utils", "xfwm4", "xfce4-panel", "xfdesktop4", "xfce4-terminal",
    "xterm",
    # st: the terminal that works under gVisor (runsc 20240729), where opening /dev/tty fails
    # with EIO: xterm opens it to check its pty became the controlling terminal and gives up,
    # xfce4-terminal (vte) cannot start its shell; st only needs the pty (docs/desktop.md)
    "stterm",
    "dbus", "dbus-x11", "fonts-dejavu-core", "adwaita-icon-theme",
    # viewing and driving it
    "x11vnc", "novnc", "websockify", "xdotool", "x11-apps", "ffmpeg",
    "firefox-esr",
)  # fmt: skip
SERVICE_DIR = Path(__file__).resolve().parent.parent / "services" / "desktop"
CACHE_DIR = Path("/var/cache/atoll")
INSTALL_ROOT = "/opt/atoll"
VENV = f"{INSTALL_ROOT}/venv"  # the same path code_interpreter's pip_install writes to
SERVICE = f"{INSTALL_ROOT}/desktop"
WORKDIR = "/home/user"
DISPLAY = ":0"
ENV = {
    "PATH": f"{VENV}/bin:{BASE_ENV['PATH']}",
    "PYTHONPATH": INSTALL_ROOT,
    "HOME": WORKDIR,
    "LANG": "C.UTF-8",
    # commands run in the sandbox (process/execute, pty) draw on the desktop by default
    "DISPLAY": DISPLAY,
    "PYTHONUNBUFFERED": "1",
    "ATOLL_DESKTOP_RUN_DIR": "/run/atoll-desktop",
}
CMD = [f"{VENV}/bin/python", "-m", "desktop"]
READY_PATH = "/api/healthz"  # 200 once Xvfb, the session, x11vnc and websockify all run
SMOKE_TEST = "import desktop.app, Xlib.display, PIL.Image, websockets, uvicorn"
# share of the whole bar each step ends at
STEPS = {"debian": 0.80, "venv": 0.82, "pip": 0.95, "compile": 0.99}


def build_hash(service_dir: Path = SERVICE_DIR) -> str:
    """What a build depends on: the recipe and every service file, by name and content."""
    recipe = [RECIPE_VERSION, PACKAGES, ENV, CMD, READY_PATH, PYTHON_VERSION, SMOKE_TEST]
    return content_hash(recipe, service_dir, service_files(service_dir))


def recorded_hash(registry: TemplateRegistry) -> str | None:
    return build.recorded_hash(registry, NAME)


def is_current(registry: TemplateRegistry, service_dir: Path = SERVICE_DIR) -> bool:
    return recorded_hash(registry) == build_hash(service_dir)


def build_desktop(
    registry: TemplateRegistry,
    *,
    on_progress: ProgressCallback | None = None,
    force: bool = False,
    service_dir: Path = SERVICE_DIR,
    cache_dir: Path = CACHE_DIR,
) -> Template:
    report = on_progress or ignore_progress
    target = registry.dir_for(NAME)
    with build_lock(target):
        wanted = build_hash(service_dir)
        existing = registry.get(NAME)
        if existing is not None and not force and recorded_hash(registry) == wanted:
            return existing
        for required in ("requirements.txt", "__main__.py"):
            if not (service_dir / required).is_file():
                raise FileNotFoundError(f"the desktop service has no {service_dir / required}")
        ensure_unused(target)
        with staging_for(target) as staging:
            rootfs = staging / "rootfs"
            run_mmdebstrap(rootfs, PACKAGES, scaled(report, 0.0, STEPS["debian"]))
            (rootfs / WORKDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
            report(STEPS["debian"], "creating the python venv")
            in_chroot(rootfs, ["python3", "-m", "venv", "--without-pip", VENV], "venv")
            copy_service(service_dir, rootfs / SERVICE.lstrip("/"))
            _seed_home(service_dir, rootfs / WORKDIR.lstrip("/"))
            pip_step = scaled(report, STEPS["venv"], STEPS["pip"])
            pip_install(rootfs, service_dir / "requirements.txt", cache_dir / "pip", pip_step)
            report(STEPS["pip"], "compiling python bytecode")
            compileall = [f"{VENV}/bin/python", "-m", "compileall", "-q", "-j0", INSTALL_ROOT]
            in_chroot(rootfs, compileall, "compileall")
            report(STEPS["compile"], "checking the result")
            in_chroot(rootfs, [f"{VENV}/bin/python", "-c", SMOKE_TEST], "import check")
            check_leftovers(rootfs)
            (staging / "template.json").write_text(json.dumps(_metadata(wanted), indent=2))
            swap_into_place(staging, target)
    report(1.0, "done")
    template = registry.get(NAME)
    assert template is not None
    return template


def _seed_home(service_dir: Path, home: Path) -> None:
    """The Xfconf channels a first session start would write (``session.sh`` copies them when
    a home has none): in the template, the session's start needs no process to copy them."""
    channels = home / ".config" / "xfce4" / "xfconf" / "xfce-perchannel-xml"
    channels.mkdir(parents=True)
    for xml in sorted((service_dir / "xfconf").glob("*.xml")):
        shutil.copy2(xml, channels / xml.name)


def _metadata(wanted: str) -> dict[str, object]:
    return {
        "id": TEMPLATE_ID,
        "name": NAME,
        "port": PORT,
        "env": ENV,
        "workdir": WORKDIR,
        "cmd": CMD,
        "ready_path": READY_PATH,
        "user": "",
        "runtime": "",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "build_hash": wanted,
    }
