"""Host-wide kernel tables that every sandbox would otherwise share with the host and each other.

Sandboxes run as uid 0 of the host's user namespace, so the kernel's per-user and global pools
are common to all of them and to the host's own root processes:

- ``fs.file-max``: the global table of open files. Its default is a fraction of RAM (about 2.5
  million on 24 GiB); one sandbox of 1 GiB can hold that many files (each is charged ~300 bytes
  to its memory cgroup), after which every unprivileged host process gets ENFILE.
- ``fs.inotify.max_user_instances`` / ``max_user_watches``: counted per (user namespace, uid),
  128 instances by default: one sandbox could take them all from every other sandbox and from
  the host's root (file watchers, systemd, editors).
- ``kernel.pty.max``: all devpts instances together; each sandbox's own devpts has a ``max=``
  of its own (see ``oci_config``), this only makes room for them.

The objects behind all of them are charged to the memory cgroup of the process that makes them,
so raising the shared tables to (near) their maximum, as systemd does for ``fs.file-max`` at
boot, leaves each sandbox's memory limit as the bound. Raised only, never lowered; once per start.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("atoll.runtime")

SHARED_TABLES: dict[str, int] = {
    "fs/file-max": 2**63 - 1,
    "fs/inotify/max_user_instances": 2**31 - 1,
    "fs/inotify/max_user_watches": 2**31 - 1,
    "kernel/pty/max": 1 << 20,  # NR_UNIX98_PTY_MAX
}


def raise_shared_tables(proc_sys: Path = Path("/proc/sys")) -> dict[str, int]:
    """Raise each table that is below its target; returns what was changed (name -> new value)."""
    changed: dict[str, int] = {}
    for name, target in SHARED_TABLES.items():
        path = proc_sys / name
        try:
            current = int(path.read_text().split()[0])
            if current >= target:
                continue
            path.write_text(str(target))
            changed[name] = int(path.read_text().split()[0])
        except (OSError, ValueError) as exc:
            log.warning("could not raise %s: %s (sandboxes share it with the host)", name, exc)
    if changed:
        log.info("raised shared kernel tables: %s", changed)
    return changed
