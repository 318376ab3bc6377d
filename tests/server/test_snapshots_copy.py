"""The two-pass snapshot copy (``atoll.server.snapshot_copy``), on real directories: after a
pre-copy, every kind of change made before the catch-up pass (including one that hides behind an
unchanged size and modification time) is in the copy, and nothing unchanged is copied again."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from atoll.server import snapshot_copy

pytestmark = [pytest.mark.privileged]  # owners, device nodes and trusted.* attributes need root

OPAQUE = "trusted.overlay.opaque"
CHURNED = 20_000


def make_layer(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "same").write_text("unchanged\n")
    (root / "hidden").write_text("version 1\n")
    (root / "gone").write_text("deleted later\n")
    (root / "a" / "mode").write_text("chmod later\n")
    (root / "a" / "b" / "deep").write_text("deep\n")
    (root / "link").symlink_to("/etc/passwd")
    (root / "tree").mkdir()
    (root / "tree" / "file").write_text("in a directory that becomes a link\n")
    os.mknod(root / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlayfs's deletion mark
    os.setxattr(root / "a" / "b", OPAQUE, b"y")
    os.chown(root / "a" / "mode", 1000, 1000)
    for number in range(200):
        (root / "a" / f"many-{number}").write_text(str(number))


def change_layer(root: Path) -> None:
    info = os.stat(root / "hidden")
    (root / "hidden").write_text("version 2\n")  # same size ...
    os.utime(root / "hidden", ns=(info.st_atime_ns, info.st_mtime_ns))  # ... and same mtime
    (root / "gone").unlink()
    (root / "new").write_text("made after the pre-copy\n")
    os.chmod(root / "a" / "mode", 0o600)
    os.removexattr(root / "a" / "b", OPAQUE)
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "a" / "b" / "c" / "d" / "e").write_text("a new deep file\n")
    (root / "link").unlink()
    (root / "link").mkdir()  # a link became a directory
    (root / "tree" / "file").unlink()
    (root / "tree").rmdir()
    (root / "tree").symlink_to("/")  # a directory became a link (never followed by the copy)


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a snapshot must keep of each entry."""
    seen: dict[str, tuple[object, ...]] = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in os.scandir(directory):
            path = Path(entry.path)
            info = os.lstat(path)
            xattrs = sorted(
                (n, os.getxattr(path, n, follow_symlinks=False))
                for n in os.listxattr(path, follow_symlinks=False)
            )
            if stat.S_ISREG(info.st_mode):
                content: object = path.read_bytes()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            else:
                content = info.st_rdev
            mtime = None if stat.S_ISDIR(info.st_mode) else info.st_mtime_ns
            seen[str(path.relative_to(root))] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                mtime,
                content,
                xattrs,
            )
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
    return seen


def test_catch_up_copies_every_change_and_nothing_else(tmp_path: Path) -> None:
    layer, copy = tmp_path / "upper", tmp_path / "snapshot" / "upper"
    layer.mkdir()
    copy.parent.mkdir()
    make_layer(layer)
    time.sleep(0.05)  # past the coarse clock's tick: the layer as made counts as unchanged
    since_ns = time.time_ns()
    asyncio.run(snapshot_copy.pre_copy(layer, copy))
    time.sleep(0.05)
    change_layer(layer)
    found = asyncio.run(snapshot_copy.catch_up(layer, copy, since_ns))
    assert describe(copy) == describe(layer)
    assert os.stat(copy / "a").st_mtime_ns == os.stat(layer / "a").st_mtime_ns
    assert found.checked == len(describe(layer)) - 2  # but a/b/c's insides: copied whole, new
    # hidden, new, a/mode, a/b/c, link (now a directory), tree (now a link): not the 200 others
    assert found.copied == 6, found.to_copy
    assert found.removed == 1  # gone
    assert (tmp_path / "snapshot" / "upper" / "tree").is_symlink()


def test_an_unchanged_layer_costs_only_a_walk(tmp_path: Path) -> None:
    layer, copy = tmp_path / "upper", tmp_path / "copy"
    layer.mkdir()
    make_layer(layer)
    time.sleep(0.05)
    since_ns = time.time_ns()
    asyncio.run(snapshot_copy.pre_copy(layer, copy))
    found = asyncio.run(snapshot_copy.catch_up(layer, copy, since_ns))
    assert (found.copied, found.removed, found.refreshed) == (0, 0, 0)
    assert describe(copy) == describe(layer)


def test_files_removed_during_the_pre_copy_are_no_error(tmp_path: Path) -> None:
    """The sandbox runs during pass 1: files it removes meanwhile make ``cp`` complain, which
    is no failure (pass 2 brings the copy up to date)."""
    layer, copy = tmp_path / "upper", tmp_path / "copy"
    (layer / "churn").mkdir(parents=True)
    make = f"seq {CHURNED} | xargs touch"
    subprocess.run(make, shell=True, cwd=layer / "churn", check=True)
    since_ns = time.time_ns()
    # remove all, make all again, as a busy sandbox would: `cp` meets names that are gone
    loop = f"while :; do find . -type f -delete; {make}; done"
    churn = subprocess.Popen(["bash", "-c", loop], cwd=layer / "churn", start_new_session=True)
    try:
        time.sleep(0.2)
        for attempt in range(3):  # a race: three copies make meeting a gap nearly certain
            copy = tmp_path / f"copy-{attempt}"
            asyncio.run(snapshot_copy.pre_copy(layer, copy))
    finally:
        os.killpg(churn.pid, signal.SIGKILL)  # the loop and its find or xargs: as a freeze would
        churn.wait()
        time.sleep(0.2)
    asyncio.run(snapshot_copy.catch_up(layer, copy, since_ns))
    assert describe(copy) == describe(layer)
