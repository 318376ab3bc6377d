"""The idmapped overlay of a user-namespaced OCI sandbox (``overlay.mount_overlay_idmapped``),
mounted for real (as root) in this process: layers seen through the mapping, named to the
sandbox by relative names only, the upper dir kept in on-disk ids, and the mount's own fd table
(where its detached layers live) never touching the server's."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.runtime import idmap, overlay
from atoll.templates.build import overlay_users

pytestmark = [pytest.mark.privileged]

BASE = 0x7100_0000  # far from any server's ranges: these mounts run no process in them
RANGE = 65536


@pytest.fixture
def work_dir() -> Iterator[Path]:
    # /var/tmp: the data dir's kind of filesystem (tmp_path may be a tmpfs)
    root = Path(tempfile.mkdtemp(prefix="atoll-test-idmap-", dir="/var/tmp"))
    try:
        yield root
    finally:
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            point = line.split()[4]
            if point.startswith(f"{root}/"):
                overlay.unmount(Path(point))
        shutil.rmtree(root)


def _layer(root: Path, name: str, marker: str) -> Path:
    layer = root / name
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / marker).write_text(marker)
    os.chown(layer / "etc" / marker, 1000, 1000)
    return layer


def _mount(root: Path, name: str, lowers: list[Path]) -> Path:
    sandbox = root / name
    disk = sandbox / "disk"
    overlay.mount_overlay_idmapped(
        lowers, disk / "upper", disk / "work", sandbox / "rootfs", base=BASE, size=RANGE
    )
    return sandbox


def _mount_lines(root: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f" {root}/" in line]


def test_layers_are_mapped_and_named_by_relative_names_only(work_dir: Path) -> None:
    lowers = [_layer(work_dir, "top", "a"), _layer(work_dir, "bottom", "b")]
    sandbox = _mount(work_dir, "sbx", lowers)
    rootfs = sandbox / "rootfs"

    assert os.stat(rootfs / "etc").st_uid == BASE  # root on disk: the sandbox's root
    assert os.stat(rootfs / "etc" / "b").st_uid == BASE + 1000
    [line] = _mount_lines(work_dir)  # the overlay alone: no layer left attached anywhere
    assert line.split()[4] == str(rootfs)
    assert {"nosuid", "nodev"} <= set(line.split()[5].split(","))
    assert "lowerdir=layers/0:layers/1,upperdir=layers/upper,workdir=layers/work," in line
    links = overlay.layer_links(rootfs)  # what build.overlay_users reads: the layers on disk
    assert {p.name: os.readlink(p) for p in links.iterdir()} == {
        "0": str(lowers[0]),
        "1": str(lowers[1]),
        "upper": str(sandbox / "disk" / "upper"),
        "work": str(sandbox / "disk" / "work"),
    }
    assert overlay_users(lowers[1]) == 1  # a template in use is never replaced under the sandbox

    def write_as_mapped_root() -> None:  # as runc and the filesystem API do (idmap.fs_owner)
        with idmap.fs_owner(BASE, BASE):
            (rootfs / "etc" / "new").write_text("x")

    writer = threading.Thread(target=write_as_mapped_root)
    writer.start()
    writer.join()
    assert os.stat(rootfs / "etc" / "new").st_uid == BASE
    assert os.stat(sandbox / "disk" / "upper" / "etc" / "new").st_uid == 0  # on-disk ids


def test_the_servers_own_fds_are_left_alone(work_dir: Path) -> None:
    """The layers are put at fixed fd numbers of the mounting thread's own fd table: the
    server's files at those numbers stay open and unchanged."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(8)]
    try:
        before = {fd: (os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in _open_fds()}
        assert overlay.FIRST_TREE_FD in before
        lowers = [_layer(work_dir, f"l{i}", f"m{i}") for i in range(3)]
        sandbox = _mount(work_dir, "sbx", lowers)
        assert (sandbox / "rootfs" / "etc" / "m2").read_text() == "m2"
        after = {fd: (os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in _open_fds()}
        assert after == before
    finally:
        for fd in held:
            os.close(fd)


def _open_fds() -> list[int]:
    names = os.listdir("/proc/self/fd")  # its own fd is among them, closed by now
    return [fd for fd in map(int, names) if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_concurrent_mounts_each_see_their_own_layers(work_dir: Path) -> None:
    lowers = {name: [_layer(work_dir, f"{name}-lower", name)] for name in ("s1", "s2", "s3", "s4")}
    failures: list[BaseException] = []

    def mount(name: str) -> None:
        try:
            _mount(work_dir, name, lowers[name])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=mount, args=(name,)) for name in lowers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for name in lowers:
        assert [p.name for p in (work_dir / name / "rootfs" / "etc").iterdir()] == [name]


def test_names_are_made_again_when_removed(work_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = work_dir / "names"
    monkeypatch.setattr(overlay, "FD_NAMES_DIR", names)
    monkeypatch.setattr(overlay, "_fd_names_made", -1)
    lower = [_layer(work_dir, "lower", "x")]
    _mount(work_dir, "first", lower)
    assert os.readlink(names / "layers" / "0") == f"/proc/thread-self/fd/{overlay.FIRST_TREE_FD + 1}"
    shutil.rmtree(names)  # this process made them already: the mount finds out, and makes them again
    second = _mount(work_dir, "second", lower)
    assert (second / "rootfs" / "etc" / "x").read_text() == "x"
    (names / "layers" / "upper").unlink()
    (names / "layers" / "upper").symlink_to("/nonexistent")  # e.g. another version's layout
    third = _mount(work_dir, "third", lower)
    assert (third / "rootfs" / "etc" / "x").read_text() == "x"
    assert os.readlink(names / "layers" / "upper") == f"/proc/thread-self/fd/{overlay.FIRST_TREE_FD}/upper"


def test_kernels_refusing_detached_layers_get_them_attached_for_the_mount(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first mount (detached layers) fails with EINVAL, as on kernels before overlayfs took
    them: the layers are attached beside the root for the mount and detached after it."""
    real = overlay._libc
    refused: list[bytes] = []

    class RefusingDetachedLayers:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def mount(self, source: bytes, target: bytes, kind: bytes, flags: int, options: bytes) -> int:
            if kind == b"overlay" and not refused:
                refused.append(options)
                ctypes.set_errno(errno.EINVAL)
                return -1
            return int(real.mount(source, target, kind, flags, options))

    monkeypatch.setattr(overlay, "_libc", RefusingDetachedLayers())
    lower = _layer(work_dir, "lower", "x")
    sandbox = _mount(work_dir, "sbx", [lower])
    assert refused
    rootfs = sandbox / "rootfs"
    assert os.stat(rootfs / "etc" / "x").st_uid == BASE + 1000
    [line] = _mount_lines(work_dir)  # the layers' temporary mount points are gone
    assert line.split()[4] == str(rootfs)
    assert not (sandbox / ".idmap").exists()
    assert os.readlink(overlay.layer_links(rootfs) / "0") == str(lower)
