"""Creates and removes one sandbox's network: a named netns and a veth pair to the host.

Done with batches of iproute2's ``ip`` (three short processes, ~7 ms): pyroute2 took ~60 ms of
mostly Python per slot, holding the interpreter lock against the event loop, which under a
burst of creates made the whole server crawl. Blocking calls; the pool runs them off the
event loop."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from atoll.network.addressing import NETNS_DIR, Slot
from atoll.runtime import userns_slot
from atoll.runtime.userns import IdRange

SYS_CLASS_NET = Path("/sys/class/net")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, batch: str, check: bool = True) -> None:
    done = subprocess.run(
        ["ip", *args, "-batch", "-"], input=batch.encode(), capture_output=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} -batch failed: {done.stderr.decode(errors='replace').strip()}")


def _write_sysctl(path: str, value: str) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
        f.write(value)


def create(slot: Slot, id_range: IdRange | None = None) -> None:
    """``id_range``: the netns is made inside a user namespace of its own mapping that range
    (``atoll.runtime.userns_slot``), for sandboxes in user namespaces."""
    if slot.netns_path.exists() or (SYS_CLASS_NET / slot.host_ifname).exists():
        remove(slot)  # a leftover from a crash must not make the slot unusable
    host, name = slot.host_ifname, slot.netns_name
    try:
        add_netns = f"netns add {name}\n" if id_range is None else ""
        if id_range is not None:
            userns_slot.create(slot.netns_path, id_range)
        _ip(batch=f"{add_netns}link add {host} type veth peer name eth0 netns {name}\n")
        # no IPv6 on the host end (set while it is down, before it has a link-local address):
        # link-local addresses would be a second way to the host
        _write_sysctl(f"/proc/sys/net/ipv6/conf/{host}/disable_ipv6", "1")
        _ip(batch=f"addr add {slot.host_ip}/{slot.prefixlen} dev {host}\nlink set {host} up\n")
        _ip(
            "-n",
            name,
            batch=(
                "link set lo up\n"
                f"addr add {slot.sandbox_ip}/{slot.prefixlen} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {slot.host_ip}\n"
            ),
        )
    except BaseException:
        remove(slot)
        raise


def remove(slot: Slot) -> None:
    """Remove the veth pair and the netns, whichever exist (idempotent)."""
    lines = []
    if (SYS_CLASS_NET / slot.host_ifname).exists():
        lines.append(f"link del {slot.host_ifname}")
    if slot.netns_path.exists():
        lines.append(f"netns del {slot.netns_name}")
    if lines:
        _ip("-force", batch="\n".join(lines) + "\n", check=False)
    userns_slot.remove(slot.netns_path)  # its user namespace, if it has one


def remove_named(name: str) -> None:
    """Remove the named netns ``name`` (one no slot describes)."""
    _ip("-force", batch=f"netns del {name}\n", check=False)


def existing_netns() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def existing_ifnames() -> list[str]:
    return sorted(os.listdir(SYS_CLASS_NET))
