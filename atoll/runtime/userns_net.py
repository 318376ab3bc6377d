"""The network of a sandbox in a user namespace (``atoll.runtime.userns``).

A sandbox boots in its network slot's user and network namespaces, made together by the pool
(``userns_slot``): nothing here runs then. A *restored* one cannot: CRIU makes a user namespace
of its own, from which the slot's network namespace (owned by the slot's user namespace) cannot
be joined, nor would sysfs mount or ``<runtime> exec`` join it. So on restore the runtime makes
the sandbox's network namespace inside CRIU's user namespace, and the slot's ``eth0`` is moved
into it by an OCI prestart hook (``network_hook``), and back into the slot's namespace before a
checkpoint and when the sandbox halts (``return_network``). For the checkpoint of a sandbox still
in its slot's namespaces, ``park`` and ``unpark`` take ``eth0`` out for the dump.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.runtime.spec import CheckpointFailed

CLONE_NEWNET = 0x40000000
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
SANDBOX_IFNAME = "eth0"  # as atoll.network.netns names the pool's end inside

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class SlotAddress:
    interface: str  # "10.1.0.2/30"
    gateway: str


def _in_netns(netns_path: Path, action: Callable[[], SlotAddress]) -> SlotAddress:
    """``action`` run on a thread of its own inside ``netns_path`` (setns is per thread)."""
    result: list[SlotAddress] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(action())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=work, name="atoll-netns-read")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _read_address() -> SlotAddress:
    request = struct.pack("16s16x", SANDBOX_IFNAME.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24])
        netmask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, request)[20:24])
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
    with open("/proc/thread-self/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and fields[7] == "00000000":  # the default route
                gateway = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
                return SlotAddress(f"{address}/{prefix}", gateway)
    raise OSError(f"no default route on {SANDBOX_IFNAME}")


def _batch(slot: SlotAddress) -> str:
    """``ip -batch`` lines that set up ``eth0`` as the network pool does (atoll.network.netns)."""
    return (
        "link set lo up\n"
        f"addr add {slot.interface} dev {SANDBOX_IFNAME}\n"
        f"link set {SANDBOX_IFNAME} up\n"
        f"route add default via {slot.gateway}\n"
    )


def _configure(ip: str, slot: SlotAddress) -> str:
    """``_batch`` as a shell command."""
    return f"{ip} -batch - <<EOF\n{_batch(slot)}EOF\n"


def _tools() -> tuple[str, str]:
    return shutil.which("ip") or "/usr/sbin/ip", shutil.which("nsenter") or "/usr/bin/nsenter"


def network_hook(netns_path: Path, saved: Path) -> dict[str, Any]:
    """An OCI prestart hook that moves the pool's ``eth0`` from ``netns_path`` into the
    sandbox's own network namespace and configures it as the pool did. runc runs prestart hooks
    once the namespaces exist and before the sandbox's processes: on ``run`` and on
    ``restore`` (CRIU's setup-namespaces step), so a restored sandbox has its network before
    its sockets come back. Costs three short processes (sh, ip, nsenter+ip). What it moved is
    written to ``saved``, for ``return_network``."""
    slot = _in_netns(netns_path, _read_address)
    saved.write_text(
        json.dumps({"netns": netns_path.name, "interface": slot.interface, "gateway": slot.gateway})
    )
    return {"path": "/bin/sh", "args": ["sh", "-c", _move_in_script(netns_path.name, slot)], "timeout": 10}


def _move_in_script(netns_name: str, slot: SlotAddress) -> str:
    ip, nsenter = _tools()
    # the runtime's state (JSON, on stdin) carries the pid of the sandbox's init
    return (
        'read -r state; pid=${state#*\\"pid\\":}; pid=${pid%%[!0-9]*}; '
        f'{ip} -n {netns_name} link set {SANDBOX_IFNAME} netns "$pid" && '
        f'exec {nsenter} --net="/proc/$pid/ns/net" ' + _configure(ip, slot)
    )


def move_network_in(saved: Path, pid: int) -> None:
    """What the prestart hook does, for a sandbox that runs on (after ``return_network`` for a
    checkpoint that left it running, or failed)."""
    try:
        info = json.loads(saved.read_text())
    except (OSError, ValueError):
        return
    script = _move_in_script(info["netns"], SlotAddress(info["interface"], info["gateway"]))
    subprocess.run(
        ["/bin/sh", "-c", script], input=f'{{"pid":{pid}}}\n'.encode(), capture_output=True, timeout=30
    )


def return_network(saved: Path, netns: Path) -> None:
    """Move ``eth0`` from the sandbox's network namespace ``netns`` (e.g. ``/proc/<pid>/fd/<n>``
    of a descriptor that keeps it alive after its processes ended) back into the pool's, set up
    as it was: the pool's namespace then outlives the sandbox's (a paused sandbox keeps its
    slot), and the next boot or restore moves it in again. Best effort: a slot left without it
    is rebuilt by the pool when released."""
    if (returned := take_network_back(saved, netns)) is not None:
        set_up_returned(*returned)


def take_network_back(saved: Path, netns: Path) -> tuple[str, SlotAddress] | None:
    """``return_network``'s move alone (one short process): ``eth0`` back in the pool's
    namespace, unconfigured there until ``set_up_returned`` (the pool's namespace name and the
    set-up to give it). What a checkpoint waits for before its dump; the set-up can run beside
    the dump. None: nothing moved."""
    try:
        info = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    ip, nsenter = _tools()
    name = info["netns"]
    moved = subprocess.run(
        [nsenter, f"--net={netns}", ip, "link", "set", SANDBOX_IFNAME, "netns", name],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return (name, SlotAddress(info["interface"], info["gateway"])) if moved.returncode == 0 else None


async def return_for_dump(saved: Path, netns_fd: int | None) -> asyncio.Future[None] | None:
    """Before the checkpoint of a restored sandbox (``netns_fd`` holds its network namespace;
    None: not one): ``eth0`` moved back into the pool's namespace, and its set-up there started
    off the event loop, to run beside the dump (await the future afterwards; None: nothing
    moved)."""
    if netns_fd is None:
        return None
    netns = Path(f"/proc/{os.getpid()}/fd/{netns_fd}")
    taken = await asyncio.to_thread(take_network_back, saved, netns)
    return None if taken is None else asyncio.ensure_future(asyncio.to_thread(set_up_returned, *taken))


def set_up_returned(netns_name: str, slot: SlotAddress) -> None:
    """``eth0``, just moved into the pool's namespace ``netns_name``, set up as the pool did."""
    ip, _ = _tools()
    subprocess.run(
        [ip, "-n", netns_name, "-batch", "-"],
        input=_batch(slot).encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )


HOLDING_SUFFIX = "-hold"  # no pool slot's netns name ends so (theirs end in their index)


def _holding_netns(netns_name: str) -> str:
    return f"{netns_name}{HOLDING_SUFFIX}"


def park(netns_path: Path) -> SlotAddress:
    """Move ``eth0`` out of ``netns_path`` into a holding namespace of its own, for a dump of
    the sandbox inside (CRIU cannot save a veth whose peer is outside). Returns its set-up."""
    slot = _in_netns(netns_path, _read_address)
    ip, _ = _tools()
    name, hold = netns_path.name, _holding_netns(netns_path.name)
    subprocess.run([ip, "netns", "del", hold], capture_output=True, timeout=30, check=False)
    subprocess.run([ip, "netns", "add", hold], capture_output=True, timeout=30, check=True)
    subprocess.run(
        [ip, "-n", name, "link", "set", SANDBOX_IFNAME, "netns", hold],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return slot


def unpark(netns_path: Path, slot: SlotAddress) -> None:
    """Undo ``park``: ``eth0`` back in ``netns_path``, set up as it was. Best effort: a slot
    left without it is rebuilt by the pool when released."""
    ip, _ = _tools()
    name, hold = netns_path.name, _holding_netns(netns_path.name)
    script = f"{ip} -n {hold} link set {SANDBOX_IFNAME} netns {name} && {ip} -n {name} " + _configure(
        ip, slot
    ).removeprefix(f"{ip} ")
    subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=30, check=False)
    subprocess.run([ip, "netns", "del", hold], capture_output=True, timeout=30, check=False)


def save_netns_with_sandbox(state_file: Path) -> None:
    """Tell runc (its ``state.json``) that the sandbox's network namespace is its own: runc
    saves one named by path as external, which a restore in a user namespace of CRIU's making
    could not join; once ``eth0`` is parked, CRIU saves it whole (a loopback) and the restore
    makes it anew."""
    state = json.loads(state_file.read_text())
    for namespace in state.get("config", {}).get("namespaces", []):
        if namespace.get("type") == "NEWNET":
            namespace["path"] = ""
    temporary = state_file.with_name(state_file.name + ".atoll")
    temporary.write_text(json.dumps(state))
    os.replace(temporary, state_file)


def drop_holding(netns_path: Path) -> None:
    """After a ``park`` that failed: its holding namespace gone (``eth0`` never left: moving it
    is ``park``'s last step)."""
    ip, _ = _tools()
    hold = _holding_netns(netns_path.name)
    subprocess.run([ip, "netns", "del", hold], capture_output=True, timeout=30, check=False)


def park_for_dump(slot_file: Path, state_file: Path) -> tuple[Path, SlotAddress] | None:
    """Before a checkpoint of a sandbox in its slot's namespaces (``slot_file`` names the
    slot's netns; none: it is not): ``save_netns_with_sandbox`` and ``park``. Returns what
    ``unpark`` needs afterwards."""
    try:
        netns_path = Path(slot_file.read_text())
    except OSError:
        return None
    try:
        save_netns_with_sandbox(state_file)
        return netns_path, park(netns_path)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        drop_holding(netns_path)
        raise CheckpointFailed(f"could not take the sandbox's network out for the dump: {exc}") from None
