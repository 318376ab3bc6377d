"""Builds the default template, Debian 12 minbase with python3, with mmdebstrap.

Built once into a temporary directory and renamed into place, so a crash never leaves a
half-built template that looks finished. ``on_progress(fraction, phase)`` reports progress."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable

from atoll.templates.registry import DEFAULT_TEMPLATE_NAME, Template, TemplateRegistry

ProgressCallback = Callable[[float, str], None]

PACKAGES = ("python3", "ca-certificates", "procps")
EXCLUDED = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")
# mmdebstrap's own phase lines, in order, with the share of the build they start at
PHASES = (
    ("I: chroot architecture", 0.02, "resolving packages"),
    ("I: downloading packages", 0.10, "downloading packages"),
    ("I: extracting archives", 0.35, "extracting archives"),
    ("I: installing essential packages", 0.50, "installing essential packages"),
    ("I: installing remaining packages", 0.75, "installing python3"),
    ("I: running --customize-hook", 0.95, "cleaning up"),
    ("I: success", 1.0, "done"),
)


def build_debian(
    registry: TemplateRegistry, *, on_progress: ProgressCallback | None = None, force: bool = False
) -> Template:
    existing = registry.get(DEFAULT_TEMPLATE_NAME)
    if existing is not None and not force:
        return existing
    report = on_progress or (lambda fraction, phase: None)
    target = registry.dir_for(DEFAULT_TEMPLATE_NAME)
    staging = target.with_name(target.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDED],
        '--customize-hook=rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
        "bookworm",
        str(staging / "rootfs"),
    ]
    report(0.0, "starting mmdebstrap")
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        tail: list[str] = []
        for line in proc.stderr:
            tail = [*tail[-30:], line.rstrip()]
            for marker, fraction, phase in PHASES:
                if line.startswith(marker):
                    report(fraction, phase)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError("mmdebstrap failed:\n" + "\n".join(tail))
    # the image's own resolv.conf/hosts are replaced by bind mounts; make sure the targets exist
    for name in ("resolv.conf", "hosts", "hostname"):
        (staging / "rootfs" / "etc" / name).touch()
    template = Template(
        id="tpl-system-debian-bookworm",
        name=DEFAULT_TEMPLATE_NAME,
        port=8080,
        env={},
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        path=target,
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    registry.save(template)
    report(1.0, "done")
    return template
