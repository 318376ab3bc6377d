"""Path confinement and the file operations on a plain directory standing in for a sandbox root
(no server, no sandbox): the kernel-level guarantees the filesystem API relies on."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll import _multipart as multipart
from atoll._exceptions import FileAccessDenied, FileConflict, FileRequestInvalid
from atoll.runtime import file_walk, files, replace
from atoll.runtime.confined import Root, normalize


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Root, Path, Path]]:
    """(root, its directory, a directory outside it holding a secret)."""
    top = tmp_path / "rootfs"
    outside = tmp_path / "outside"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (top / "etc" / "group").write_text("root:x:0:\n")
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    root = Root.open(str(top), require_mount=False)
    try:
        yield root, top, outside
    finally:
        root.close()


def test_normalize() -> None:
    assert normalize("/a/./b//c/") == "/a/b/c"
    assert normalize("a/b/../c", base="/work") == "/work/a/c"
    assert normalize("/") == "/"
    for path in ("/..", "/a/../..", "../x"):
        with pytest.raises(FileAccessDenied):
            normalize(path)
    for bad in ("", "a\x00b", "x" * 5000):
        with pytest.raises(FileRequestInvalid):
            normalize(bad)


def test_links_resolve_inside_the_root(layout: tuple[Root, Path, Path]) -> None:
    root, top, outside = layout
    (top / "abs").symlink_to(outside / "secret")  # an absolute host path
    (top / "up").symlink_to("../../../../..")
    (top / "dir").symlink_to(outside)
    (top / "etc" / "shadow").write_text("inside")
    (top / "shadow").symlink_to("/etc/shadow")
    with pytest.raises(FileNotFoundError):
        root.open_path("/abs", os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        root.open_path("/up/" + str(outside / "secret").lstrip("/"), os.O_RDONLY)
    with pytest.raises(FileNotFoundError):
        files.open_for_write(root, "/dir/new", permissions=None)
    fd = root.open_regular("/shadow", os.O_RDONLY)
    assert os.read(fd, 100) == b"inside"
    os.close(fd)
    assert root.host_path_of(root.open_dir("/up")) == "/"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_a_directory_swapped_for_a_link_never_leads_outside(layout: tuple[Root, Path, Path]) -> None:
    root, top, outside = layout
    (top / "d").mkdir()
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            os.rename(top / "d", top / "d.real")
            os.symlink(outside, top / "d")
            os.unlink(top / "d")
            os.rename(top / "d.real", top / "d")
            flips += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    written = 0
    try:
        # at least 3000 tries, and on until one landed: on a loaded host the flipper may win
        # every early race
        for n in itertools.count():
            if (n >= 3000 and written) or n >= 300_000:
                break
            try:  # what open_for_write does once the parents exist
                fd = root.open_regular(f"/d/f{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            os.close(fd)
            written += 1
    finally:
        stop.set()
        flipper.join()
    assert written > 0 and flips > 0
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_operations_on_a_plain_tree(layout: tuple[Root, Path, Path]) -> None:
    root, top, _ = layout
    accounts = files.Accounts(root)
    files.mkdir(root, "/a/b", recursive=True, permissions="700")
    with pytest.raises(FileConflict):
        files.mkdir(root, "/a/b", recursive=True, permissions=None)
    version = files.open_for_write(root, "/a/b/f.txt", permissions="640")
    replace.write_all(version.fd, b"one\ntwo\nthree\n")
    version.commit()
    info = files.info_of(root, "/a/b/f.txt", accounts)
    assert (info.size, info.mode, info.owner) == (14, "640", accounts.owner(os.getuid()))
    assert [i.path for i in file_walk.ls(root, "/a", recursive=True, exclude=(), accounts=accounts)] == [
        "/a/b",
        "/a/b/f.txt",
    ]
    assert file_walk.glob(root, "/", "**/*.txt", exclude=()) == ["/a/b/f.txt"]
    assert file_walk.grep(root, "/", "^t", include=None, exclude=("etc",)) == [
        {"path": "/a/b/f.txt", "line": 2, "content": "two"},
        {"path": "/a/b/f.txt", "line": 3, "content": "three"},
    ]
    diff, count = files.edit_file(root, "/a/b/f.txt", [("two", "2")])
    assert count == 1 and "+2\n" in diff
    replace.copy(root, "/a", "/c", recursive=True, overwrite=False)
    assert (top / "c" / "b" / "f.txt").read_text() == "one\n2\nthree\n"
    replace.move(root, "/c", "/a", overwrite=True)
    assert not (top / "c").exists() and (top / "a" / "b" / "f.txt").exists()
    files.delete(root, "/a", recursive=True)
    assert not (top / "a").exists()
    for path in ("/", "/.atoll/busybox"):
        with pytest.raises(FileAccessDenied):
            files.delete(root, path, recursive=True)


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        (b"a\nb\nc\n", {"head": 2}, b"a\nb\n"),
        (b"a\nb\nc\n", {"tail": 2}, b"b\nc\n"),
        (b"a\nb\nc", {"tail": 1}, b"c"),
        (b"a\nb\nc\n", {"tail": 5}, b"a\nb\nc\n"),
        (b"a\nb\nc\n", {"head": 0}, b""),
        (b"a\nb\nc\n", {"offset": 2, "limit": 2}, b"b\n"),
        (b"a\nb\nc\n", {"offset": 2, "tail": 1}, b"c\n"),
        (b"", {"tail": 3}, b""),
        (b"x" * 3_000_000 + b"\nlast\n", {"tail": 1}, b"last\n"),
    ],
)
def test_read_range(tmp_path: Path, data: bytes, options: dict[str, int], expected: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        kwargs: dict[str, int | None] = {"offset": None, "limit": None, "head": None, "tail": None, **options}
        start, end = file_walk.read_range(fd, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    assert data[start:end] == expected


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/*.py", "a/b/c.py", True),
        ("**/*.py", "c.py", True),
        ("*.py", "a/c.py", False),
        ("src/[ab]?.txt", "src/a1.txt", True),
        ("src/[!ab]?.txt", "src/a1.txt", False),
        ("x.y", "xzy", False),
        ("a/**", "a/b/c", True),
    ],
)
def test_glob_patterns(pattern: str, path: str, matches: bool) -> None:
    assert bool(file_walk.glob_regex(pattern).match(path)) is matches


def test_multipart_parser_any_chunking() -> None:
    names = ["/plain", "/ünï ✓", '/q"uote', "/back\\slash", "/ctl\r\nx"]
    payloads = [os.urandom(5000), b"", b"\r\n--notaboundary\r\n", b"\r", b"--"]
    boundary = multipart.new_boundary()
    doc = b"preamble\r\n" + b"".join(
        f"--{boundary}\r\n".encode() + multipart.part_header(n) + p + b"\r\n"
        for n, p in zip(names, payloads, strict=True)
    )
    doc += f"--{boundary}--\r\nepilogue".encode()
    content_type = f'multipart/form-data; boundary="{boundary}"'
    assert multipart.parse(content_type, doc) == dict(zip(names, payloads, strict=True))
    for size in (1, 3, 17, 4096):
        parser = multipart.MultipartParser(multipart.boundary_of(content_type))
        seen: dict[str, bytes] = {}
        current = ""
        for i in range(0, len(doc), size):
            for kind, value in parser.feed(doc[i : i + size]):
                if kind == "part":
                    assert isinstance(value, multipart.Part) and value.name is not None
                    current = value.name
                    seen[current] = b""
                elif kind == "data":
                    assert isinstance(value, bytes)
                    seen[current] += value
        parser.close()
        assert seen == dict(zip(names, payloads, strict=True)), size
    with pytest.raises(multipart.MultipartError):
        multipart.parse(content_type, doc[: len(doc) // 2])
    with pytest.raises(multipart.MultipartError):
        multipart.boundary_of("application/json")
    assert multipart.field_name("form-data; name*=utf-8''%C3%BC") == "ü"
