"""The filesystem API's shapes (wire-protocol §8) and its argument checks: pure, no I/O.

Parsing is lenient like ``models``: a missing field takes a neutral default. Checks raise
``InvalidArgument`` before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from atoll._exceptions import InvalidArgument

_MODE = re.compile(r"^[0-7]{3,4}$")
EditSpec: TypeAlias = "FileEdit | tuple[str, str] | Mapping[str, str]"


@dataclass(frozen=True)
class FileInfo:
    """Metadata of one path in a sandbox. For a symlink, the type, size and mode are those of its
    target inside the sandbox (the link's own when it dangles) and ``link_target`` says where it
    points."""

    name: str
    path: str
    is_dir: bool = False
    size: int = 0
    mode: str = ""
    mtime: int = 0
    owner: str = ""
    group: str = ""
    is_symlink: bool = False
    link_target: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileInfo:
        target = data.get("link_target")
        return cls(
            name=str(data.get("name", "")),
            path=str(data.get("path", "")),
            is_dir=bool(data.get("is_dir", False)),
            size=int(data.get("size", 0) or 0),
            mode=str(data.get("mode", "")),
            mtime=int(data.get("mtime", 0) or 0),
            owner=str(data.get("owner", "")),
            group=str(data.get("group", "")),
            is_symlink=bool(data.get("is_symlink", False)),
            link_target=str(target) if target is not None else None,
        )


@dataclass(frozen=True)
class TreeEntry:
    name: str
    type: str = "file"  # "file" or "directory"
    children: list[TreeEntry] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeEntry:
        children = data.get("children") or []
        return cls(
            name=str(data.get("name", "")),
            type=str(data.get("type", "file")),
            children=[cls.from_dict(c) for c in children if isinstance(c, Mapping)],
        )


@dataclass(frozen=True)
class SearchMatch:
    path: str
    line: int
    content: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchMatch:
        return cls(
            path=str(data.get("path", "")),
            line=int(data.get("line", 0) or 0),
            content=str(data.get("content", "")),
        )


@dataclass(frozen=True)
class FileEdit:
    """One find-and-replace: every occurrence of ``find`` becomes ``replace``."""

    find: str
    replace: str = ""


@dataclass(frozen=True)
class EditFileResult:
    diff: str
    replacements: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditFileResult:
        return cls(diff=str(data.get("diff", "")), replacements=int(data.get("replacements", 0) or 0))


@dataclass(frozen=True)
class EditResult:
    file: str
    success: bool
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EditResult:
        error = data.get("error")
        return cls(
            file=str(data.get("file", "")),
            success=bool(data.get("success", False)),
            error=str(error) if error else None,
        )


def items(data: Mapping[str, Any]) -> list[Any]:
    found = data.get("items")
    return list(found) if isinstance(found, list) else []


# checks ------------------------------------------------------------------------------------------
def check_path(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(name, f"must be a non-empty path string, got {value!r}")
    if "\x00" in value:
        raise InvalidArgument(name, "must not contain NUL bytes")
    return value


def check_paths(name: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidArgument(name, f"must be a non-empty list of paths, got {value!r}")
    return [check_path(f"{name}[{i}]", v) for i, v in enumerate(value)]


def check_mode(name: str, value: object) -> str:
    if not isinstance(value, str) or not _MODE.match(value.strip()):
        raise InvalidArgument(name, f"must be an octal mode string such as '755', got {value!r}")
    return value.strip()


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(name, f"must be a non-negative integer, got {value!r}")
    return value


def check_patterns(name: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(name, f"must be a list of glob patterns, got {value!r}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise InvalidArgument(f"{name}[{index}]", f"must be a non-empty string, got {item!r}")
    return list(value)


def check_text(name: str, value: object, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise InvalidArgument(name, f"must be a {'' if allow_empty else 'non-empty '}string, got {value!r}")
    return value


def read_body(*, path: object, offset: object, limit: object, head: object, tail: object) -> dict[str, Any]:
    if head is not None and tail is not None:
        raise InvalidArgument("head", "head and tail are mutually exclusive")
    body: dict[str, Any] = {"path": check_path("path", path)}
    for key, value in (("offset", offset), ("limit", limit), ("head", head), ("tail", tail)):
        if value is not None:
            body[key] = check_count(key, value)
    return body


def edits_body(edits: object) -> list[dict[str, str]]:
    if isinstance(edits, (str, bytes)) or not isinstance(edits, Sequence) or not edits:
        raise InvalidArgument("edits", "must be a non-empty list of FileEdit (or (find, replace) pairs)")
    out: list[dict[str, str]] = []
    for index, edit in enumerate(edits):
        find: object
        replace: object
        if isinstance(edit, FileEdit):
            find, replace = edit.find, edit.replace
        elif isinstance(edit, tuple) and len(edit) == 2:
            find, replace = edit
        elif isinstance(edit, Mapping):
            find, replace = edit.get("find"), edit.get("replace", "")
        else:
            raise InvalidArgument(f"edits[{index}]", f"must be a FileEdit, got {edit!r}")
        out.append(
            {
                "find": check_text(f"edits[{index}].find", find, allow_empty=False),
                "replace": check_text(f"edits[{index}].replace", replace),
            }
        )
    return out
