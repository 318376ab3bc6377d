"""Sandbox-made trees deeper than Python's stack, on a plain directory standing in for a sandbox
root (no server): removal at any depth with few fds, walks and copies refused past their depth
limit with nothing left behind, and replacements that leave the old file whole when dropped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll._exceptions import FileRequestInvalid
from atoll.runtime import file_walk, files, replace, trees
from atoll.runtime.confined import Root

DEPTH = 3000  # past the recursion limit (1,000) and past PATH_MAX as a path (6,000 bytes)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    (tmp_path / "rootfs").mkdir()
    with Root.open(str(tmp_path / "rootfs"), require_mount=False) as opened:
        yield opened


def make_deep(top: Path, depth: int = DEPTH) -> None:
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for index in range(depth):  # by fds: the path would be longer than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        os.close(os.open(f"f{index % 3}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_removal_at_any_depth_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    make_deep(tmp_path / "deep")
    fd = os.open(tmp_path / "deep", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(trees.REMOVE_HELD_FDS + 10):  # a link deep down, past the held fds
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink(outside, "link", dir_fd=fd)
    os.close(fd)
    before = open_fds()
    trees.remove_host_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()
    assert [p.name for p in outside.iterdir()] == ["keep"]
    assert open_fds() == before


def test_walks_and_copies_stop_at_the_depth_limit(root: Root, tmp_path: Path) -> None:
    make_deep(tmp_path / "rootfs" / "deep")
    accounts = files.Accounts(root)
    for walk in (
        lambda: file_walk.ls(root, "/deep", recursive=True, exclude=(), accounts=accounts),
        lambda: file_walk.tree(root, "/deep", max_depth=None, exclude=()),
        lambda: file_walk.glob(root, "/deep", "**/f0", exclude=()),
        lambda: file_walk.grep(root, "/deep", "x", include=None, exclude=()),
    ):
        with pytest.raises(FileRequestInvalid, match="deeper than 256 levels"):
            walk()
    assert [i.name for i in file_walk.ls(root, "/deep", recursive=False, exclude=(), accounts=accounts)] == [
        "d",
        "f0",
    ]
    with pytest.raises(FileRequestInvalid, match="deeper than 256 levels"):
        replace.copy(root, "/deep", "/copy", recursive=True, overwrite=False)
    assert sorted(os.listdir(tmp_path / "rootfs")) == ["deep"]  # nothing of the copy is left
    files.delete(root, "/deep", recursive=True)
    assert os.listdir(tmp_path / "rootfs") == []


def test_a_dropped_replacement_leaves_the_old_file(root: Root, tmp_path: Path) -> None:
    target = tmp_path / "rootfs" / "f.txt"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    version = files.open_for_write(root, "/f.txt", permissions=None)
    replace.write_all(version.fd, b"partial new cont")
    version.abort()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path / "rootfs") == ["f.txt"]
    version = files.open_for_write(root, "/f.txt", permissions=None)
    replace.write_all(version.fd, b"new")
    version.commit()
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o640"
    # a directory replaced by a copy of another: swapped whole, the old one gone
    (tmp_path / "rootfs" / "src" / "x").mkdir(parents=True)
    (tmp_path / "rootfs" / "dst" / "old").mkdir(parents=True)
    replace.copy(root, "/src", "/dst", recursive=True, overwrite=True)
    assert os.listdir(tmp_path / "rootfs" / "dst") == ["x"]
    assert sorted(os.listdir(tmp_path / "rootfs")) == ["dst", "f.txt", "src"]
