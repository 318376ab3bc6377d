"""Atoll's helper layer: a tiny read-only overlay layer on top of every template that carries
static binaries the runtime relies on, so no template needs them and no sandbox's upper layer
is touched by them: ``/.atoll/agent`` (PID 1 of every sandbox and the way commands reach it, built
from ``agent.c``), ``/.atoll/init`` (catatonit, a plain reaping PID 1, which the benchmarks' bare
runtime baseline uses) and ``/.atoll/busybox``."""

from __future__ import annotations

import shutil
from pathlib import Path

from atoll.runtime import agent, idmap

SOURCES = {
    "init": (Path("/usr/bin/catatonit"), "catatonit"),
    "busybox": (Path(idmap.BUSYBOX), "busybox-static"),
}


def prepare(layer_dir: Path) -> Path:
    target = layer_dir / ".atoll"
    (target / "run").mkdir(parents=True, exist_ok=True)  # mount point of the exec output tmpfs
    for name, (source, package) in SOURCES.items():
        if not source.exists():
            raise RuntimeError(f"{source} is missing: install the Debian package {package}")
        dest = target / name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            tmp = dest.with_suffix(".tmp")
            shutil.copy2(source, tmp)
            tmp.chmod(0o755)
            tmp.rename(dest)
    agent.build(target / "agent")
    return layer_dir
