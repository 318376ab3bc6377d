"""User namespaces for OCI sandboxes: root inside is an unprivileged uid outside.

Each network slot (``atoll.network.pool``) holds one range of ``RANGE_SIZE`` host uids and gids
(the same numbers for both), ``base + index * RANGE_SIZE`` for an index no other slot holds, and
a user namespace mapping it that owns the slot's network namespace (``userns_slot``): a sandbox
joins both. A claim is a file ``CLAIMS_DIR/<first host id>`` naming the server's cgroup and the
slot, created with O_EXCL. The directory is one for the whole host, so every server on it (each
instance) draws from the same pool and two slots never share a range, whatever server made
them; claims survive a restart of the server (its sandboxes keep running). A claim is released
when its slot is torn down; one whose slot is gone (e.g. its server was killed) is reclaimed when
a server starts (``Ranges.sweep``: its own at once, another server's once older than
``CLAIM_GRACE_S``) or when the ranges run out, by whichever server runs out.

Nothing on disk carries the host uids: template layers, upper dirs and snapshots keep the ids
seen inside (``0`` for root) and are shown through idmapped mounts (``idmap``, ``overlay``), so a
sandbox restored or forked under another range sees the same files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.runtime import idmap

RANGE_SIZE = 65536  # ids 0..65535 inside: what images assume (nobody is 65534)
CLAIMS_DIR = Path("/run/atoll/userns-claims")  # host-wide: shared by every instance
# A claim is written before its slot's namespaces are made (milliseconds later): one younger
# than this may be a slot on its way, not a leftover, so only older ones are reclaimed
CLAIM_GRACE_S = 60.0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


# Where a sandbox's root is shown to its runtime: runc, already inside the user namespace, looks
# the root's path up as the sandbox's root, which cannot pass Atoll's 0700 data and run dirs. So
# the root is bound again below a 0711 directory (it can be passed, not listed) into one that only
# the sandbox's root may enter.
ROOTS_DIR = Path("/run/atoll-userns")
MS_BIND = 0x1000
MNT_DETACH = 0x2
MAX_STACKED = 8
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def runtime_root(instance: str, sandbox_id: str) -> Path:
    return ROOTS_DIR / instance / sandbox_id / "rootfs"


def show_root(rootfs: Path, instance: str, sandbox_id: str, id_range: IdRange) -> Path:
    """Bind ``rootfs`` (a mount) where the sandbox's root can reach it; returns that path. The
    bind keeps the overlay's nosuid and nodev."""
    target = runtime_root(instance, sandbox_id)
    if target.parent.exists():  # a leftover of a crash (see hide_root)
        hide_root(instance, sandbox_id)
    for directory in (ROOTS_DIR, ROOTS_DIR / instance):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
            os.chmod(directory, 0o711)  # whatever the umask
    target.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(target.parent, id_range.base, id_range.base)
    target.mkdir(mode=0o700, exist_ok=True)
    if _libc.mount(str(rootfs).encode(), str(target).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {rootfs} on {target}: {os.strerror(err)}")
    return target


def shown_roots(instance: str) -> set[str]:
    """The sandboxes of ``instance`` with something left of ``show_root`` (a server killed mid-create
    leaves it with no container to halt: it keeps the root, and the disk under it, mounted)."""
    try:
        return {entry.name for entry in (ROOTS_DIR / instance).iterdir()}
    except OSError:
        return set()


def hide_root(instance: str, sandbox_id: str) -> None:
    """Undo ``show_root`` and ``expose_bind_sources`` (idempotent). Their mount points are known:
    no look at mountinfo, which with thousands of mounts on a host costs tens of ms."""
    top = runtime_root(instance, sandbox_id).parent
    binds = top / "binds"
    try:
        shown = sorted(binds.iterdir(), reverse=True)
    except OSError:
        shown = []
    points = [*shown, top / "rootfs"]
    for point in points:
        for _ in range(MAX_STACKED):  # a crash may have left one bound over another
            if _libc.umount2(str(point).encode(), MNT_DETACH) != 0:
                break  # EINVAL: not (any more) a mount point; ENOENT: never made
    for directory in (*points, binds, top):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):  # the instance's dir, once it holds no sandbox (same thread
        top.parent.rmdir()  # as show_root: the event loop's, so no sandbox comes in between)


def expose_bind_sources(mounts: list[dict[str, Any]], instance: str, sandbox_id: str) -> None:
    """Point the bind mounts of a sandbox's config at its own 0700 directory (``show_root``).

    CRIU restores bind mounts from inside the user namespace, where the sources under Atoll's
    0700 data and run dirs cannot be reached; each source's directory is bound once beside the
    root (e.g. the generated /etc files, LXCFS's /proc files) and the sources renamed."""
    top = runtime_root(instance, sandbox_id).parent
    shown: dict[Path, Path] = {}
    for mount in mounts:
        if mount.get("type") != "bind":
            continue
        source = Path(mount["source"])
        if source.is_dir():
            continue  # none today: a directory bind would be shown whole, the same way
        parent = source.parent
        if parent not in shown:
            target = top / "binds" / str(len(shown))
            target.mkdir(parents=True, exist_ok=True)
            if _libc.mount(str(parent).encode(), str(target).encode(), None, MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind {parent} on {target}: {os.strerror(err)}")
            shown[parent] = target
        mount["source"] = str(shown[parent] / source.name)


class RangeRecords:
    """The range each sandbox of a backend runs under (its slot's), kept beside the runtime's
    state so that it survives a restart of the server: the filesystem API creates files as the
    sandbox's mapped root (``idmap.FS_OWNER``)."""

    def __init__(self, state_root: Path) -> None:
        self.state_root = state_root

    def _path(self, sandbox_id: str) -> Path:
        return self.state_root / f"{sandbox_id}.userns"

    def record(self, sandbox_id: str, id_range: IdRange) -> None:
        self._path(sandbox_id).write_text(str(id_range.base))

    def of(self, sandbox_id: str) -> IdRange | None:
        try:
            return IdRange(int(self._path(sandbox_id).read_text()))
        except (OSError, ValueError):
            return None

    def forget(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(sandbox_id).unlink()


class RangesExhausted(RuntimeError):
    """Every range is held by a running sandbox."""


@dataclass(frozen=True)
class IdRange:
    base: int  # host id of root inside
    size: int = RANGE_SIZE

    def mappings(self) -> list[dict[str, int]]:
        """The OCI ``linux.uidMappings``/``gidMappings`` value."""
        return [{"containerID": 0, "hostID": self.base, "size": self.size}]


class Ranges:
    """Allocates ``count`` ranges from host id ``base`` to the slots (named by their netns) of
    the server whose sandboxes' cgroups are below ``owner``; claims recorded in ``claims_dir``
    (host-wide, see the module's doc)."""

    def __init__(
        self, claims_dir: Path, *, base: int, count: int, owner: str, grace_s: float = CLAIM_GRACE_S
    ) -> None:
        if base < RANGE_SIZE or base + count * RANGE_SIZE > 2**32 - 2:
            raise ValueError(f"uid range {base}+{count}x{RANGE_SIZE} is outside 65536..2**32-2")
        if base % RANGE_SIZE:  # claims are named by first id: servers' ranges must line up
            raise ValueError(f"uid range base {base} is not a multiple of {RANGE_SIZE}")
        self.claims_dir = claims_dir
        self.base = base
        self.count = count
        self.owner = owner
        self.grace_s = grace_s
        self._lock = threading.Lock()
        claims_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._held: dict[str, int] = {}  # holder (a slot's netns name) -> index
        for index, (claim_owner, holder, _) in self._claims().items():
            if claim_owner == owner and 0 <= index < count:
                self._held[holder] = index

    def _range(self, index: int) -> IdRange:
        return IdRange(self.base + index * RANGE_SIZE)

    def _path(self, index: int) -> Path:
        return self.claims_dir / str(self.base + index * RANGE_SIZE)

    def _claims(self) -> dict[int, tuple[str, str, float]]:
        """Every claim in the directory on this server's grid of ranges: index -> (owner,
        holder, when it was written)."""
        found: dict[int, tuple[str, str, float]] = {}
        for entry in self.claims_dir.iterdir():
            if not entry.name.isdigit() or (int(entry.name) - self.base) % RANGE_SIZE:
                continue
            try:
                written = entry.stat().st_mtime
                text = entry.read_text()
            except OSError:
                continue
            # empty: created, not yet written (or never: its server was killed in between),
            # which no holder can be alive for once the grace has passed
            claim_owner, _, holder = text.partition("\n") if text else ("", "", "")
            found[(int(entry.name) - self.base) // RANGE_SIZE] = (claim_owner, holder, written)
        return found

    def of(self, holder: str) -> IdRange | None:
        index = self._held.get(holder)
        return None if index is None else self._range(index)

    def claim(self, holder: str, is_alive: Callable[[str, str], bool]) -> IdRange:
        """The holder's range (the one it holds, or a free one). ``is_alive(owner, holder)``
        tells whether a claim's holder (a slot) still exists, for reclaiming leftovers when none is free."""
        with self._lock:
            if (index := self._held.get(holder)) is not None:
                return self._range(index)
            for attempt in range(2):
                taken = set(self._held.values())
                for index in range(self.count):
                    if index not in taken and self._write_claim(index, holder):
                        self._held[holder] = index
                        return self._range(index)
                if attempt == 0:
                    self._reclaim_dead(is_alive)
            raise RangesExhausted(f"all {self.count} user-namespace id ranges are in use")

    def _write_claim(self, index: int, holder: str) -> bool:
        try:
            fd = os.open(self._path(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        try:
            os.write(fd, f"{self.owner}\n{holder}".encode())
        finally:
            os.close(fd)
        return True

    def _reclaim_dead(self, is_alive: Callable[[str, str], bool], *, own_at_once: bool = False) -> None:
        """Drop the claims whose holder is gone, once older than the grace (``own_at_once``: this
        server's whatever their age, when none of its slots can be on its way)."""
        now = time.time()
        for index, (claim_owner, holder, written) in self._claims().items():
            mine = claim_owner == self.owner
            if now - written < self.grace_s and not (mine and own_at_once):
                continue
            if not claim_owner or not is_alive(claim_owner, holder):
                if mine:
                    self._held.pop(holder, None)
                self._unlink_if(index, claim_owner, holder)

    def sweep(self, is_alive: Callable[[str, str], bool]) -> None:
        """At start-up, before this server makes any slot: drop the claims whose holder is gone
        (a slot removed while its server was down, a killed server's, a claim of an older
        format naming a sandbox), this server's at once and other servers' once older than
        the grace, so that leftovers never wait for the ranges to run out."""
        with self._lock:
            self._reclaim_dead(is_alive, own_at_once=True)

    def release(self, holder: str) -> None:
        with self._lock:
            index = self._held.pop(holder, None)
            if index is not None:
                self._unlink_if(index, self.owner, holder)

    def _unlink_if(self, index: int, owner: str, holder: str) -> None:
        """Remove claim ``index`` if it still names ``owner``'s ``holder`` (another server may
        have reclaimed it and claimed it again since)."""
        path = self._path(index)
        with contextlib.suppress(OSError):
            if path.read_text() == (f"{owner}\n{holder}" if owner else ""):
                path.unlink()


def make_mount_points(rootfs: Path, mounts: list[dict[str, Any]], id_range: IdRange) -> None:
    """Create the bind mounts' missing mount points in ``rootfs`` as the sandbox's root.

    ``runc restore`` creates them from outside, as the host's root, which an idmapped upper layer
    refuses (EOVERFLOW: the host's root is not mapped); ``run`` needs none (it binds over the
    procfs it mounted first), so this runs on restore only. Leaves e.g. ``/proc/meminfo`` files in
    the upper dir, hidden under the sandbox's /proc."""

    def work() -> None:
        with idmap.fs_owner(id_range.base, id_range.base):
            for mount in mounts:
                if mount.get("type") != "bind":
                    continue
                point = rootfs / str(mount["destination"]).lstrip("/")
                if os.path.lexists(point):
                    continue
                point.parent.mkdir(parents=True, exist_ok=True)
                if Path(mount["source"]).is_dir():
                    point.mkdir(exist_ok=True)
                else:
                    point.touch(exist_ok=True)

    failure: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=guarded, name="atoll-mount-points")  # fs_owner is per thread
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


# CRIU saves the user namespace's id map in userns.img and restores it from there, so an image
# restored under another range (a snapshot's forks, a sandbox resumed after its range was freed)
# would run with the ids of the sandbox it was taken from. The restore reads a view of the
# image (hard links) whose userns.img names the new range.
USERNS_IMAGES = "userns-*.img"  # one per user namespace (a sandbox has one)
_IMG_COMMON_MAGIC = 0x54564319


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _userns_entry(id_range: IdRange) -> bytes:
    """``userns_entry`` (criu/images/userns.proto): one extent in uid_map (1) and gid_map (2)."""
    extent = b"\x08" + _varint(0) + b"\x10" + _varint(id_range.base) + b"\x18" + _varint(id_range.size)
    field = _varint(len(extent)) + extent
    return b"\x0a" + field + b"\x12" + field


def image_for_range(image_dir: Path, view: Path, id_range: IdRange) -> Path:
    """``view``: ``image_dir`` with its user namespace's map set to ``id_range``. Returns the
    image dir to restore from (``image_dir`` itself when it has no user namespace)."""
    maps = sorted(image_dir.glob(USERNS_IMAGES))
    if not maps:
        return image_dir
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(mode=0o755)  # CRIU reads it inside the user namespace (the data dir above is 0700)
    for entry in image_dir.iterdir():
        if entry in maps or not entry.is_file():
            continue
        try:
            os.link(entry, view / entry.name)
        except OSError:  # another filesystem
            shutil.copy2(entry, view / entry.name)
    payload = _userns_entry(id_range)
    for original in maps:
        data = original.read_bytes()
        header = 8 if struct.unpack_from("<I", data)[0] == _IMG_COMMON_MAGIC else 4
        (view / original.name).write_bytes(data[:header] + struct.pack("<I", len(payload)) + payload)
    return view
