"""``system/code-interpreter:v0.1.0``: Debian's Python 3 with a Jupyter kernel and the data
stack, and Debian's Node.js with TypeScript, running Atoll's code interpreter service
(``atoll/services/code_interpreter``) on port 49999.

Everything is installed at build time, never at sandbox run time: Debian packages by
mmdebstrap; the service's pinned ``requirements.txt`` by the host's pip (so the host's pip
configuration, indexes and certificates apply) into a venv created inside the root filesystem
by its own python; its ``package-lock.json`` by the host's ``npm ci``. Download caches stay
under ``CACHE_DIR``, outside the template. ``template.json`` records a hash of the recipe and
the service files: a build is skipped while it matches."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from atoll.templates import build
from atoll.templates.build import (
    ProgressCallback,
    build_lock,
    content_hash,
    ensure_unused,
    ignore_progress,
    run_logged,
    run_mmdebstrap,
    scaled,
    staging_for,
    swap_into_place,
)
from atoll.templates.registry import BASE_ENV, Template, TemplateRegistry

NAME = "system/code-interpreter:v0.1.0"
TEMPLATE_ID = "tpl-system-code-interpreter-v0-1-0"
PORT = 49999
# bump when the steps below change what a build produces: cached templates are then rebuilt
RECIPE_VERSION = "1"
PACKAGES = ("python3", "python3-venv", "nodejs", "ca-certificates", "procps")
SERVICE_DIR = Path(__file__).resolve().parent.parent / "services" / "code_interpreter"
CACHE_DIR = Path("/var/cache/atoll")
INSTALL_ROOT = "/opt/atoll"
VENV = f"{INSTALL_ROOT}/venv"
SERVICE = f"{INSTALL_ROOT}/code_interpreter"
WORKDIR = "/home/user"
PYTHON_VERSION = "3.11"  # bookworm's python3; the host's pip must run on the same minor version
ENV = {
    "PATH": f"{VENV}/bin:{BASE_ENV['PATH']}",
    "PYTHONPATH": INSTALL_ROOT,
    "HOME": WORKDIR,
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "NODE_PATH": f"{SERVICE}/node_modules",
    "PYTHONUNBUFFERED": "1",
    # the kernels' sockets and connection files, away from /tmp (which user code may clean)
    "ATOLL_CI_RUN_DIR": "/run/atoll-ci",
}
CMD = [f"{VENV}/bin/python", "-m", "code_interpreter"]
READY_PATH = "/healthz"  # creates wait until the service answers here (its kernel is up)
SMOKE_TEST = "import ipykernel, jupyter_client, matplotlib.pyplot"
HASHED_FILES_SKIP = ("__pycache__", "node_modules", ".pytest_cache")
# share of the whole bar each step ends at
STEPS = {"debian": 0.35, "venv": 0.37, "pip": 0.80, "npm": 0.92, "compile": 0.99}


def service_files(service_dir: Path) -> list[Path]:
    """The service's files, relative and sorted (what is copied and what the hash covers)."""
    found = []
    for path in service_dir.rglob("*"):
        relative = path.relative_to(service_dir)
        if path.is_file() and not any(part in HASHED_FILES_SKIP for part in relative.parts):
            if path.suffix != ".pyc":
                found.append(relative)
    return sorted(found)


def build_hash(service_dir: Path = SERVICE_DIR) -> str:
    """What a build depends on: the recipe and every service file (requirements.txt and
    package-lock.json among them), by name and content."""
    recipe = [RECIPE_VERSION, PACKAGES, ENV, CMD, READY_PATH, PYTHON_VERSION, SMOKE_TEST]
    return content_hash(recipe, service_dir, service_files(service_dir))


def recorded_hash(registry: TemplateRegistry) -> str | None:
    return build.recorded_hash(registry, NAME)


def is_current(registry: TemplateRegistry, service_dir: Path = SERVICE_DIR) -> bool:
    return recorded_hash(registry) == build_hash(service_dir)


def build_code_interpreter(
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
        for required in ("requirements.txt", "package.json", "package-lock.json", "__main__.py"):
            if not (service_dir / required).is_file():
                raise FileNotFoundError(f"the code interpreter service has no {service_dir / required}")
        ensure_unused(target)
        with staging_for(target) as staging:
            rootfs = staging / "rootfs"
            run_mmdebstrap(rootfs, PACKAGES, scaled(report, 0.0, STEPS["debian"]))
            (rootfs / WORKDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
            report(STEPS["debian"], "creating the python venv")
            in_chroot(rootfs, ["python3", "-m", "venv", "--without-pip", VENV], "venv")
            copy_service(service_dir, rootfs / SERVICE.lstrip("/"))
            pip_step = scaled(report, STEPS["venv"], STEPS["pip"])
            pip_install(rootfs, service_dir / "requirements.txt", cache_dir / "pip", pip_step)
            report(STEPS["pip"], "installing node packages")
            run_logged(
                ["npm", "ci", "--no-audit", "--no-fund", "--cache", str(cache_dir / "npm")],
                "npm ci",
                cwd=rootfs / SERVICE.lstrip("/"),
            )
            report(STEPS["npm"], "compiling python bytecode")
            # inside the root filesystem, so the bytecode names the paths sandboxes see
            compileall = [f"{VENV}/bin/python", "-m", "compileall", "-q", "-j0", INSTALL_ROOT]
            in_chroot(rootfs, compileall, "compileall")
            report(STEPS["compile"], "checking the result")
            # imports the stack once as sandboxes will (a broken install fails the build here),
            # leaving matplotlib's font cache in HOME so a sandbox's first plot is quick
            in_chroot(rootfs, [f"{VENV}/bin/python", "-c", SMOKE_TEST], "import check")
            check_leftovers(rootfs)
            (staging / "template.json").write_text(json.dumps(_metadata(wanted), indent=2))
            swap_into_place(staging, target)
    report(1.0, "done")
    template = registry.get(NAME)
    assert template is not None
    return template


def in_chroot(rootfs: Path, argv: list[str], what: str) -> None:
    """Run ``argv`` inside the root filesystem with a sandbox-like environment (nothing of the
    host's, such as its PYTHONPATH, leaks in)."""
    env = {"PATH": BASE_ENV["PATH"], "LANG": "C.UTF-8", "HOME": WORKDIR, "PYTHONPATH": INSTALL_ROOT}
    run_logged(["chroot", str(rootfs), *argv], what, env=env)


def copy_service(service_dir: Path, destination: Path) -> None:
    destination.mkdir(parents=True)
    for relative in service_files(service_dir):
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(service_dir / relative, destination / relative)


def pip_install(rootfs: Path, requirements: Path, cache: Path, report: ProgressCallback) -> None:
    """The requirements into the rootfs's venv with the host's pip (its configuration applies),
    then the console scripts' interpreter lines pointed at the venv's python. ``report`` gets
    0..1 for this step alone."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        raise RuntimeError(f"the host's pip must run on python {PYTHON_VERSION} to install for the template")
    argv = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--root", str(rootfs), "--prefix", VENV, "--ignore-installed", "--no-compile",
        "--no-warn-script-location", "--cache-dir", str(cache), "-r", str(requirements),
    ]  # fmt: skip
    report(0.0, "installing python packages")
    run_logged(argv, "pip install", on_line=pip_progress(_requirement_count(requirements), report))
    bin_dir = rootfs / VENV.lstrip("/") / "bin"
    for script in bin_dir.iterdir():
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if data.startswith(b"#!") and b"\n" in data:
                first, rest = data.split(b"\n", 1)
                if b"python" in first and first != f"#!{VENV}/bin/python".encode():
                    script.write_bytes(f"#!{VENV}/bin/python\n".encode() + rest)


def _requirement_count(requirements: Path) -> int:
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return sum(1 for line in lines if line and not line.startswith("-"))


_COLLECTING = re.compile(r"^Collecting ([A-Za-z0-9_.-]+)")


def pip_progress(expected: int, report: ProgressCallback) -> Callable[[str], None]:
    """Progress from pip's output: downloading is 85% of it (one "Collecting" line per package,
    transitive ones too, so the count may exceed ``expected``), installing the rest."""
    seen: list[str] = []

    def on_line(line: str) -> None:
        match = _COLLECTING.match(line)
        if match:
            seen.append(match.group(1))
            total = max(expected, len(seen) + 1)
            report(0.85 * len(seen) / total, f"installing python packages ({match.group(1)})")
        elif line.startswith("Installing collected packages"):
            report(0.85, "installing python packages (unpacking)")
        elif line.startswith("Successfully installed"):
            report(1.0, "python packages installed")

    return on_line


def check_leftovers(rootfs: Path) -> None:
    """No download cache may ship in the template."""
    home = WORKDIR.lstrip("/")
    for cache in ("root/.cache", "root/.npm", f"{home}/.cache/pip", f"{home}/.npm", "tmp/npm-cache"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    for name in ("resolv.conf", "hosts", "hostname"):
        if not (rootfs / "etc" / name).exists():
            raise RuntimeError(f"/etc/{name} is missing from the template")


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
