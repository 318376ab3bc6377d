"""The sandbox root filesystem: read-only template layers under a private writable upper dir.

Mounted with mount(2) directly (a `mount` process per create would cost milliseconds)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
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
CLONE_FILES = 0x400
LAYERS = "layers"
MAX_LOWER_DIRS = 500  # overlayfs' own limit (OVL_MAX_STACK)

# Where an idmapped overlay's mount finds its layers (``mount_overlay_idmapped``): links that
# never change, into the mounting thread's own fd table, in which the layers' mapped trees are
# put at fixed numbers: the upper's parent at ``FIRST_TREE_FD``, lower ``i`` right after it.
# Host-wide and the same for every server (``-`` in the name: no instance is called so).
FD_NAMES_DIR = Path("/run/atoll/idmap-layers")
FIRST_TREE_FD = 3
_fd_names_made = -1  # how many lower layers FD_NAMES_DIR names (checked by this process)
_fd_names_lock = threading.Lock()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _options(lower_count: int) -> str:
    lower = ":".join(f"{LAYERS}/{i}" for i in range(lower_count))
    # index=off and xino=off: the sandbox's upper dir must stay portable (stop/start, snapshots)
    return f"lowerdir={lower},upperdir={LAYERS}/upper,workdir={LAYERS}/work,index=off,xino=off"


def _name_layers(links: Path, named: Sequence[tuple[str, Path | str]]) -> None:
    """``links/<name>`` pointing at each path (replacing what a crash or an earlier mount left)."""
    links.mkdir(mode=0o700, exist_ok=True)
    for name, real in named:
        link = links / name
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(real.absolute() if isinstance(real, Path) else real)


def _layers(lower_dirs: Sequence[Path], upper: Path, work: Path) -> list[tuple[str, Path | str]]:
    return [*((str(i), d) for i, d in enumerate(lower_dirs)), ("upper", upper), ("work", work)]


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
    _name_layers(base / LAYERS, _layers(lower_dirs, upper, work))
    options = _options(len(lower_dirs))
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


def _in_directory(directory: Path | None, action: Callable[[], None], *, own_fds: bool = False) -> None:
    """Run ``action`` with ``directory`` as the working directory, on a thread of its own that
    first stops sharing the working directory with the rest of the process (``CLONE_FS``), so
    the server's other threads never see it change. ``own_fds``: and a copy of the process's fd
    table (``CLONE_FILES``), which the thread may change at will; what it opens there is closed
    when it exits, by the kernel, after ``join`` has returned."""
    failure: list[BaseException] = []
    flags = CLONE_FS | (CLONE_FILES if own_fds else 0)

    def work() -> None:
        try:
            if own_fds:  # a signal's C handler writes to Python's wakeup fd by number: not here
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            _check(_libc.unshare(flags), "unshare")
            if directory is not None:  # None: ``action`` goes where it needs
                os.chdir(directory)
            action()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=work, name="atoll-overlay-mount")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _fd_names(lower_count: int) -> list[tuple[str, str]]:
    trees = f"/proc/thread-self/fd/{FIRST_TREE_FD}"
    lowers = ((str(i), f"/proc/thread-self/fd/{FIRST_TREE_FD + 1 + i}") for i in range(lower_count))
    return [*lowers, ("upper", f"{trees}/upper"), ("work", f"{trees}/work")]


def _ensure_fd_names(lower_count: int, *, recheck: bool = False) -> None:
    """``FD_NAMES_DIR/layers`` names ``lower_count`` lower layers (made once: servers share it)."""
    global _fd_names_made
    with _fd_names_lock:
        if lower_count <= _fd_names_made and not recheck:
            return
        links = FD_NAMES_DIR / LAYERS
        links.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, real in _fd_names(lower_count):
            link = links / name
            for _ in range(2):  # another server may make the same link between the two looks
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(link) == real:
                        break
                    link.unlink()  # not what this version names (e.g. an older layout's)
                with contextlib.suppress(FileExistsError):
                    link.symlink_to(real)
                    break
        _fd_names_made = max(_fd_names_made, lower_count)


def _place(fds: Sequence[int], first: int) -> None:
    """Move ``fds`` to ``first``, ``first + 1``, ... of the calling thread's own fd table
    (``_in_directory(own_fds=True)``: what those numbers held there were copies)."""
    lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for number, fd in enumerate(lifted, start=first):
        os.dup2(fd, number, inheritable=False)
        os.close(fd)


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
    ``n`` is host id ``base + n``; see ``userns``). Upper and work (named so) must share a
    parent: it is mapped as one mount. Nothing is copied or chowned, and the upper dir stays in
    on-disk ids. ``userns_path``: a user namespace that maps ``base``/``size`` already (the
    sandbox's slot's), used instead of making one.

    The layers are mapped as detached mounts (the overlay holds private clones of them). They
    are made on a thread with an fd table of its own, at fixed numbers that the links in
    ``FD_NAMES_DIR`` name through ``/proc/thread-self/fd``: the mount names its layers
    ``layers/0``... from there, as ``mount_overlay`` does from beside ``target``, whose links
    name the layers on disk from the start. So a create writes no link twice, and the detached
    mounts go when the thread ends (their release waits for an RCU grace period: ~0.2 ms no
    create waits for). Nothing outlives a crash: detached mounts die with their process.
    Kernels that refuse detached layers (EINVAL) get them on temporary mount points beside
    ``target``."""
    if upper.parent != work.parent or (upper.name, work.name) != ("upper", "work"):
        raise ValueError("upper and work dirs must be <one dir>/upper and <one dir>/work")
    if len(lower_dirs) > MAX_LOWER_DIRS:
        raise ValueError(f"{len(lower_dirs)} lower layers: overlayfs takes at most {MAX_LOWER_DIRS}")
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    named = _layers(lower_dirs, upper, work)
    _name_layers(target.parent / LAYERS, named)
    _ensure_fd_names(len(lower_dirs))
    mount_point = str(target.absolute()).encode()
    options = _options(len(lower_dirs)).encode()

    def mount() -> None:  # on its own thread, with its own working directory and fd table
        with idmap.userns_fd(base, size, userns_path) as ns_fd:
            trees = [idmap.open_idmapped(upper.parent, ns_fd, read_only=False)]
            trees += [idmap.open_idmapped(layer, ns_fd, read_only=True) for layer in lower_dirs]
        _place(trees, FIRST_TREE_FD)
        trees = list(range(FIRST_TREE_FD, FIRST_TREE_FD + len(trees)))
        for attempt in range(2):
            try:
                os.chdir(FD_NAMES_DIR)
                # the overlay works in its upper dir with the mounter's credentials: they must be
                # ids the mapping covers (the sandbox's root), or it falls back to read-only
                with idmap.fs_owner(base, base):
                    _check(
                        _libc.mount(b"overlay", mount_point, b"overlay", MS_NODEV | MS_NOSUID, options),
                        f"mount overlay on {target}",
                    )
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT and attempt == 0:  # FD_NAMES_DIR removed meanwhile?
                    _ensure_fd_names(len(lower_dirs), recheck=True)
                    continue
                if exc.errno != errno.EINVAL:
                    raise
                _mount_through_staging([*trees[1:], trees[0]], upper, work, target, owner=base)
                _name_layers(target.parent / LAYERS, named)  # the staging named its mounts
                return

    _in_directory(None, mount, own_fds=True)


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
