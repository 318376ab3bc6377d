"""Walking a sandbox directory tree from the host: ``ls -R``, ``tree``, ``glob`` and ``grep``.

The top directory is opened through ``openat2`` (``confined.Root``); below it every directory is
opened by name relative to its parent's fd with ``O_NOFOLLOW``, so a walk never follows a
symlink and a directory swapped for a link mid-walk is skipped, not entered. Results are capped
so that one call cannot make the server hold an unbounded answer; ``read_range`` picks the bytes
of a file that ``read-file``'s offset/limit/head/tail select, scanning in bounded chunks.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

from atoll._exceptions import FileRequestInvalid
from atoll.runtime.confined import Root
from atoll.runtime.files import Accounts, FileInfo, info_of
from atoll.runtime.trees import MAX_DEPTH, MAX_DIR_ENTRIES

MAX_ENTRIES = 50_000  # ls / tree / glob answers
MAX_MATCHES = 10_000  # grep answers
GREP_DEADLINE_S = 30.0
GREP_MAX_FILE = 64 * 1024 * 1024
GREP_MAX_LINE = 4096
BINARY_SNIFF = 8192
SCAN_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    rel: str  # path relative to the walk's top, "a/b"
    name: str
    info: os.stat_result
    depth: int  # 1 for the top's own children

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.info.st_mode)


def _component(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (close := part.find("]", i + 2)) > 0:
            body = part[i + 1 : close]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _translate(pattern: str) -> str:
    """A glob over relative paths as a regex: ``**`` spans directories, ``*`` and ``?`` stay in one."""
    parts = [p for p in pattern.strip("/").split("/") if p]
    out: list[str] = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
        else:
            out.append(_component(part) + ("" if last else "/"))
    return "".join(out)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(f"(?s:{_translate(pattern)})\\Z")
    except re.error as exc:
        raise FileRequestInvalid(f"invalid pattern {pattern!r}: {exc}") from None


def glob_depth(pattern: str) -> int | None:
    """How deep a pattern can match (None: any depth)."""
    parts = [p for p in pattern.strip("/").split("/") if p]
    return None if "**" in parts else len(parts)


def excluded(rel: str, name: str, patterns: Sequence[str]) -> bool:
    """An exclude pattern matches an entry's name (``node_modules``, ``*.pyc``) or its relative
    path (``build/**``)."""
    return any(fnmatch.fnmatchcase(name, p) or glob_regex(p).match(rel) for p in patterns)


def walk(
    root: Root,
    top: str,
    *,
    max_depth: int | None = None,
    exclude: Sequence[str] = (),
    limit: int = MAX_ENTRIES,
    deadline: float | None = None,
) -> Iterator[Entry]:
    """Depth-first, sorted by name; a directory is yielded before its contents. Stops after
    ``limit`` entries, and refuses to go below ``MAX_DEPTH`` levels (400 either way: a silently
    shortened listing would mislead). Iterative: the depth of a sandbox's tree never becomes the
    depth of the server's stack; one fd is held per level being walked."""
    fd = root.open_path(top, os.O_RDONLY | os.O_DIRECTORY)
    count = 0
    # each level: (its fd, its path prefix, its depth, its entries not yet visited, reversed)
    stack: list[tuple[int, str, int, list[os.DirEntry[str]]]] = [(fd, "", 1, _sorted_entries(fd))]
    try:
        while stack:
            dir_fd, prefix, depth, pending = stack[-1]
            if not pending:
                stack.pop()
                os.close(dir_fd)
                continue
            item = pending.pop()
            rel = f"{prefix}{item.name}"
            if exclude and excluded(rel, item.name, exclude):
                continue
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we looked
            count += 1
            if count > limit:
                raise FileRequestInvalid(
                    f"more than {limit} entries under {top} (the limit of one call): "
                    "narrow the path, depth or exclude"
                )
            if deadline is not None and time.monotonic() > deadline:
                return
            entry = Entry(rel=rel, name=item.name, info=info, depth=depth)
            yield entry
            if not entry.is_dir or (max_depth is not None and depth >= max_depth):
                continue
            try:
                child = os.open(item.name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # swapped for a link, removed, or unreadable: not entered
            try:
                entries = _sorted_entries(child)
            except BaseException:
                os.close(child)
                raise
            if entries and depth >= MAX_DEPTH:
                os.close(child)
                raise FileRequestInvalid(
                    f"{top}: the tree is deeper than {MAX_DEPTH} levels (the depth limit of a walk): "
                    "narrow the path or pass a max_depth"
                )
            stack.append((child, rel + "/", depth + 1, entries))
    finally:
        for dir_fd, *_ in stack:
            os.close(dir_fd)


def _sorted_entries(dir_fd: int) -> list[os.DirEntry[str]]:
    """The directory's entries, last name first (the walk pops from the end). A directory too
    big to hold is refused rather than read whole."""
    entries: list[os.DirEntry[str]] = []
    with os.scandir(dir_fd) as scan:
        for entry in scan:
            entries.append(entry)
            if len(entries) > MAX_DIR_ENTRIES:
                raise FileRequestInvalid(
                    f"a directory with more than {MAX_DIR_ENTRIES} entries (the limit of a walk): "
                    "narrow the path"
                )
    entries.sort(key=lambda e: e.name, reverse=True)
    return entries


def _join(top: str, rel: str) -> str:
    return top.rstrip("/") + "/" + rel


def ls(
    root: Root, path: str, *, recursive: bool, exclude: Sequence[str], accounts: Accounts
) -> list[FileInfo]:
    return [
        info_of(root, _join(path, e.rel), accounts, e.info)
        for e in walk(root, path, max_depth=None if recursive else 1, exclude=exclude)
    ]


def tree(root: Root, path: str, *, max_depth: int | None, exclude: Sequence[str]) -> list[dict[str, object]]:
    """Nested ``{name, type, children?}``; directories at ``max_depth`` carry no ``children``."""
    top: list[dict[str, object]] = []
    stack: list[tuple[int, list[dict[str, object]]]] = [(0, top)]
    for entry in walk(root, path, max_depth=max_depth, exclude=exclude):
        while stack[-1][0] >= entry.depth:
            stack.pop()
        node: dict[str, object] = {"name": entry.name, "type": "directory" if entry.is_dir else "file"}
        stack[-1][1].append(node)
        if entry.is_dir and (max_depth is None or entry.depth < max_depth):
            children: list[dict[str, object]] = []
            node["children"] = children
            stack.append((entry.depth, children))
    return top


def glob(root: Root, path: str, pattern: str, *, exclude: Sequence[str]) -> list[str]:
    if not pattern.strip("/"):
        raise FileRequestInvalid("pattern must not be empty")
    regex = glob_regex(pattern)
    depth = glob_depth(pattern)
    return [
        _join(path, e.rel) for e in walk(root, path, max_depth=depth, exclude=exclude) if regex.match(e.rel)
    ]


def grep(
    root: Root, path: str, pattern: str, *, include: str | None, exclude: Sequence[str]
) -> list[dict[str, object]]:
    """Lines matching the regular expression ``pattern`` in the text files under ``path`` (or in
    ``path`` itself). Binary files, symlinks and files over 64 MiB are skipped."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FileRequestInvalid(f"invalid pattern {pattern!r}: {exc}") from None
    deadline = time.monotonic() + GREP_DEADLINE_S
    matches: list[dict[str, object]] = []
    info = root.stat(path)
    if stat.S_ISREG(info.st_mode):
        fd = root.open_regular(path, os.O_RDONLY)
        _grep_fd(fd, path, regex, matches)
        return matches
    for entry in walk(root, path, exclude=exclude, limit=10 * MAX_ENTRIES, deadline=deadline):
        if not stat.S_ISREG(entry.info.st_mode) or entry.info.st_size > GREP_MAX_FILE:
            continue
        if (
            include
            and not fnmatch.fnmatchcase(entry.name, include)
            and not glob_regex(include).match(entry.rel)
        ):
            continue
        full = _join(path, entry.rel)
        try:
            fd = root.open_regular(full, os.O_RDONLY | os.O_NOFOLLOW)
        except (OSError, FileRequestInvalid):
            continue
        if not _grep_fd(fd, full, regex, matches) or time.monotonic() > deadline:
            break
    return matches


def _grep_fd(fd: int, path: str, regex: re.Pattern[str], matches: list[dict[str, object]]) -> bool:
    """Append the matches of one file; False once the answer is full."""
    with os.fdopen(fd, "rb") as f:
        if b"\x00" in f.peek(BINARY_SNIFF)[:BINARY_SNIFF]:
            return True
        for number, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if regex.search(line):
                matches.append({"path": path, "line": number, "content": line[:GREP_MAX_LINE]})
                if len(matches) >= MAX_MATCHES:
                    return False
    return True


def read_range(
    fd: int, *, offset: int | None, limit: int | None, head: int | None, tail: int | None
) -> tuple[int, int]:
    """The byte range [start, end) of the file that the read-file options select: offset and
    limit pick bytes, then head or tail keep the first or last N lines of those."""
    size = os.fstat(fd).st_size
    start = min(offset or 0, size)
    end = size if limit is None else min(size, start + limit)
    if head is not None:
        end = _after_nth_newline(fd, start, end, head)
    elif tail is not None:
        start = _tail_start(fd, start, end, tail)
    return start, end


def _after_nth_newline(fd: int, start: int, end: int, lines: int) -> int:
    if lines <= 0:
        return start
    seen = 0
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(SCAN_CHUNK, end - pos), pos)
        if not chunk:
            break
        index = -1
        while True:
            index = chunk.find(b"\n", index + 1)
            if index < 0:
                break
            seen += 1
            if seen == lines:
                return pos + index + 1
        pos += len(chunk)
    return end


def _tail_start(fd: int, start: int, end: int, lines: int) -> int:
    if lines <= 0:
        return end
    stop = end
    if stop > start and os.pread(fd, 1, stop - 1) == b"\n":
        stop -= 1  # a final newline ends the last line; it does not start another
    seen = 0
    pos = stop
    while pos > start:
        size = min(SCAN_CHUNK, pos - start)
        chunk = os.pread(fd, size, pos - size)
        index = len(chunk)
        while True:
            index = chunk.rfind(b"\n", 0, index)
            if index < 0:
                break
            seen += 1
            if seen == lines:
                return pos - size + index + 1
        pos -= size
    return start
