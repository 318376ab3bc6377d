"""The sandbox root filesystem: read-only template layers under a private writable upper dir.

Mounted with mount(2) directly (a `mount` process per create would cost milliseconds)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from atoll.runtime import idmap

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
CLONE_FS = 0x200
LAYERS = "layers"


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount_overlay(
    lower_dirs: Sequence[Path], upper: Path, work: Path, target: Path, *, owner: int | None = None
) -> None:
    """Mount the overlay on ``target``. Its layers are named through links beside it
    (``<target's dir>/layers/0``, ``…/upper``, ``…/work``), by those relative names: the kernel
    shows the option strings as given in ``/proc/self/mountinfo``, which the sandbox reads, so it
    sees ``lowerdir=layers/0:layers/1`` instead of the host's data dir and template paths."""
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    base = target.parent
    links = base / LAYERS
    links.mkdir(mode=0o700, exist_ok=True)
    named = [(str(i), d) for i, d in enumerate(lower_dirs)] + [("upper", upper), ("work", work)]
    for name, real in named:
        link = links / name
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(real.absolute())
    lower = ":".join(f"{LAYERS}/{i}" for i in range(len(lower_dirs)))
    # index=off and xino=off: the sandbox's upper dir must stay portable (stop/start, snapshots)
    options = f"lowerdir={lower},upperdir={LAYERS}/upper,workdir={LAYERS}/work,index=off,xino=off"
    # nosuid: a setuid file a sandbox writes must not be one for the host's users; inside, the
    # sandbox's no_new_privs already ignores setuid bits, so nothing there changes
    flags = MS_NODEV | MS_NOSUID

    def mount() -> None:
        _check(
            _libc.mount(b"overlay", str(target).encode(), b"overlay", flags, options.encode()),
            f"mount overlay on {target}",
        )

    def mount_as_owner() -> None:
        # ``owner``: idmapped layers (mount_overlay_idmapped). The overlay works in its upper dir
        # with the credentials of whoever mounts it: they must be ids the mapping covers (the
        # sandbox's root), or it falls back to read-only (EOVERFLOW)
        if owner is None:
            mount()
            return
        with idmap.fs_owner(owner, owner):
            mount()

    _in_directory(base, mount_as_owner)


def layer_links(mount_point: Path) -> Path:
    """Where the overlay mounted on ``mount_point`` names its layers (``mount_overlay``)."""
    return mount_point.parent / LAYERS


def _in_directory(directory: Path, action: Callable[[], None]) -> None:
    """Run ``action`` with ``directory`` as the working directory, on a thread of its own that
    first stops sharing the working directory with the rest of the process (``CLONE_FS``), so
    the server's other threads never see it change."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
            os.chdir(directory)
            action()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=work, name="atoll-overlay-mount")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def mount_overlay_idmapped(
    lower_dirs: Sequence[Path],
    upper: Path,
    work: Path,
    target: Path,
    *,
    base: int,
    size: int,
    userns_path: Path | None = None,
) -> None:
    """The overlay of ``mount_overlay`` with every layer seen through an id mapping (on-disk id
    ``n`` is host id ``base + n``; see ``userns``). Upper and work must share a parent: it is
    mapped as one mount. Nothing is copied or chowned, and the upper dir stays in on-disk ids.

    The layers are mapped as detached mounts, named to the overlay through ``/proc/self/fd``:
    nothing to attach, detach or remove (a mount point's rmdir after a detach took ~3 ms each);
    the overlay holds private clones of them. Kernels that refuse detached layers (EINVAL) get
    them on temporary mount points beside ``target``. ``userns_path``: a user namespace that
    maps ``base``/``size`` already (the sandbox's slot's), used instead of making one."""
    if upper.parent != work.parent:
        raise ValueError("upper and work dirs must share a parent")
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    trees: list[int] = []
    try:
        with idmap.userns_fd(base, size, userns_path) as ns_fd:
            for layer in lower_dirs:
                trees.append(idmap.open_idmapped(layer, ns_fd, read_only=True))
            trees.append(idmap.open_idmapped(upper.parent, ns_fd, read_only=False))
        layers = [Path(f"/proc/self/fd/{tree}") for tree in trees]
        try:
            mount_overlay(layers[:-1], layers[-1] / upper.name, layers[-1] / work.name, target, owner=base)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _mount_through_staging(trees, upper, work, target, owner=base)
        # the links now name the layers as they are on disk (for build.overlay_users), not
        # the mounts they were seen through
        named = [*((str(i), layer) for i, layer in enumerate(lower_dirs)), ("upper", upper), ("work", work)]
        for name, real in named:
            link = layer_links(target) / name
            link.unlink()
            link.symlink_to(real.absolute())
    finally:
        for tree in trees:
            os.close(tree)


def _mount_through_staging(trees: list[int], upper: Path, work: Path, target: Path, *, owner: int) -> None:
    """``mount_overlay_idmapped`` on kernels whose overlayfs takes no detached layers."""
    staging = target.parent / ".idmap"
    attached: list[Path] = []
    try:
        for i, tree in enumerate(trees):
            attached.append(staging / (str(i) if i < len(trees) - 1 else "disk"))
            idmap.move_tree(tree, attached[-1])
        disk = attached[-1]
        mount_overlay(attached[:-1], disk / upper.name, disk / work.name, target, owner=owner)
    finally:
        for point in reversed(attached):
            with contextlib.suppress(OSError):
                _check(_libc.umount2(str(point).encode(), MNT_DETACH), f"detach {point}")
            with contextlib.suppress(OSError):
                point.rmdir()
        with contextlib.suppress(OSError):
            staging.rmdir()


def unmount(target: Path) -> None:
    """Unmount ``target`` if it is mounted; lazily when busy, so teardown never wedges."""
    rc = _libc.umount2(str(target).encode(), 0)
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
        return
    if err == errno.EBUSY:
        _check(_libc.umount2(str(target).encode(), MNT_DETACH), f"lazy unmount {target}")
        return
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points below ``prefix`` (for the reconciler's leak sweep), deepest first."""
    found: list[Path] = []
    prefix_s = str(prefix).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix_s):
                found.append(Path(mount_point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
