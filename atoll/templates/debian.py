"""The default template, ``system/debian:bookworm``: Debian 12 minbase made ready for agents.

``/home/user`` is the working directory and ``HOME``; ``python``/``pip``/``venv``, git, curl,
wget, unzip and Debian's Node.js come from mmdebstrap; npm and the language servers
(``pyright-langserver``, ``typescript-language-server`` with ``typescript``) from the pinned
``lsp/package-lock.json``, installed by the host's ``npm ci`` into ``/opt/atoll/lsp`` with links
in ``/usr/local/bin`` (Debian's own npm package would pull ~350 MB of build tooling: perl
modules, libssl-dev, node-gyp and hundreds of node-* packages). Nothing is fetched at sandbox
run time. ``template.json`` records a hash of the recipe and the lock: a template built by an
older recipe is rebuilt, a current one is skipped (``atoll template build --all``)."""

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
    run_logged,
    run_mmdebstrap,
    scaled,
    staging_for,
    swap_into_place,
)
from atoll.templates.registry import BASE_ENV, DEFAULT_TEMPLATE_NAME, Template, TemplateRegistry

TEMPLATE_ID = "tpl-system-debian-bookworm"
PORT = 8080
# bump when the steps below change what a build produces: cached templates are then rebuilt
RECIPE_VERSION = "3"
PACKAGES = (
    "python3", "python-is-python3", "python3-pip", "python3-venv",
    "git", "curl", "wget", "unzip", "nodejs",
    "ca-certificates", "procps", "less",
)  # fmt: skip
WORKDIR = "/home/user"
ENV = {"HOME": WORKDIR}
LSP_DIR = Path(__file__).resolve().parent / "lsp"
LSP_FILES = ("package.json", "package-lock.json")
LSP_ROOT = "/opt/atoll/lsp"
# the commands sandboxes (and the LSP service) run, linked into /usr/local/bin
LSP_BINARIES = (
    "npm", "npx", "pyright", "pyright-langserver", "typescript-language-server", "tsc", "tsserver",
)  # fmt: skip
SMOKE_TESTS = (
    ["python", "-c", "import venv, ensurepip"],
    ["pip", "--version"],
    ["git", "--version"],
    ["npm", "--version"],
    ["pyright", "--version"],
    ["typescript-language-server", "--version"],
)
CACHE_DIR = Path("/var/cache/atoll")
STEPS = {"debian": 0.75, "npm": 0.92, "check": 0.99}


def build_hash(lsp_dir: Path = LSP_DIR) -> str:
    """What a build depends on: the recipe and the language servers' pinned lock."""
    recipe = [RECIPE_VERSION, PACKAGES, WORKDIR, ENV, LSP_ROOT, LSP_BINARIES, SMOKE_TESTS]
    return content_hash(recipe, lsp_dir, LSP_FILES)


def recorded_hash(registry: TemplateRegistry) -> str | None:
    return build.recorded_hash(registry, DEFAULT_TEMPLATE_NAME)


def is_current(registry: TemplateRegistry) -> bool:
    return recorded_hash(registry) == build_hash()


def build_debian(
    registry: TemplateRegistry,
    *,
    on_progress: ProgressCallback | None = None,
    force: bool = False,
    cache_dir: Path = CACHE_DIR,
) -> Template:
    report = on_progress or ignore_progress
    target = registry.dir_for(DEFAULT_TEMPLATE_NAME)
    with build_lock(target):
        wanted = build_hash()
        existing = registry.get(DEFAULT_TEMPLATE_NAME)
        if existing is not None and not force and recorded_hash(registry) == wanted:
            return existing
        ensure_unused(target)
        with staging_for(target) as staging:
            rootfs = staging / "rootfs"
            run_mmdebstrap(rootfs, PACKAGES, scaled(report, 0.0, STEPS["debian"]))
            (rootfs / WORKDIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
            report(STEPS["debian"], "installing language servers")
            install_language_servers(rootfs, cache_dir / "npm")
            report(STEPS["npm"], "checking the result")
            for argv in SMOKE_TESTS:  # a broken install fails the build here, not in a sandbox
                in_chroot(rootfs, argv, " ".join(argv))
            remove_caches(rootfs)
            report(STEPS["check"], "done checking")
            (staging / "template.json").write_text(json.dumps(_metadata(wanted), indent=2))
            swap_into_place(staging, target)
    report(1.0, "done")
    template = registry.get(DEFAULT_TEMPLATE_NAME)
    assert template is not None
    return template


def install_language_servers(rootfs: Path, npm_cache: Path) -> None:
    """``npm ci`` of the pinned lock (pure JavaScript packages, so the host's npm installs them
    for the sandbox's node) and links to their commands in /usr/local/bin."""
    destination = rootfs / LSP_ROOT.lstrip("/")
    destination.mkdir(parents=True)
    for name in LSP_FILES:
        shutil.copy2(LSP_DIR / name, destination / name)
    argv = ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts"]
    argv += ["--cache", str(npm_cache)]
    run_logged(argv, "npm ci (language servers)", cwd=destination)
    bin_dir = rootfs / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in LSP_BINARIES:
        if not (destination / "node_modules/.bin" / name).exists():
            raise FileNotFoundError(f"the language servers' install has no {name}")
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(f"{LSP_ROOT}/node_modules/.bin/{name}")  # resolved inside the sandbox


def in_chroot(rootfs: Path, argv: list[str], what: str) -> None:
    """Run ``argv`` inside the root filesystem with a sandbox's environment (not the host's)."""
    env = {**BASE_ENV, **ENV}
    run_logged(["chroot", str(rootfs), *argv], what, env=env)


def remove_caches(rootfs: Path) -> None:
    home = WORKDIR.lstrip("/")
    for cache in ("root/.cache", "root/.npm", f"{home}/.cache", f"{home}/.npm", f"{home}/.config"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)


def _metadata(wanted: str) -> dict[str, object]:
    return {
        "id": TEMPLATE_ID,
        "name": DEFAULT_TEMPLATE_NAME,
        "port": PORT,
        "env": ENV,
        "workdir": WORKDIR,
        "cmd": [],
        "ready_path": "",
        "user": "",
        "runtime": "",
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "build_hash": wanted,
    }
