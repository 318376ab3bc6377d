"""Request bodies of the filesystem API (wire-protocol §8). Paths are checked for shape here and
resolved inside the sandbox by ``atoll.runtime.confined``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Path = Annotated[str, Field(min_length=1, max_length=4096)]
Patterns = Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(max_length=100)]
Count = Annotated[int, Field(ge=0, strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathBody(_Body):
    path: Path


class LsBody(_Body):
    path: Path
    recursive: bool = False
    exclude: Patterns | None = None


class MkdirBody(_Body):
    path: Path
    recursive: bool = False
    permissions: Annotated[str, Field(max_length=8)] | None = None


class ReadFileBody(_Body):
    path: Path
    offset: Count | None = None
    limit: Count | None = None
    head: Count | None = None
    tail: Count | None = None

    @model_validator(mode="after")
    def _head_or_tail(self) -> ReadFileBody:
        if self.head is not None and self.tail is not None:
            raise ValueError("head and tail are mutually exclusive")
        return self


class ReadFilesBody(_Body):
    paths: Annotated[list[Path], Field(min_length=1, max_length=1000)]


class DeleteBody(_Body):
    path: Path
    recursive: bool = False


class SetPermissionsBody(_Body):
    path: Path
    mode: Annotated[str, Field(min_length=1, max_length=8)] | None = None
    owner: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    group: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _something(self) -> SetPermissionsBody:
        if self.mode is None and self.owner is None and self.group is None:
            raise ValueError("at least one of mode, owner, group is required")
        return self


class GlobBody(_Body):
    path: Path
    pattern: Annotated[str, Field(min_length=1, max_length=1024)]
    exclude: Patterns | None = None


class GrepBody(_Body):
    path: Path
    pattern: Annotated[str, Field(min_length=1, max_length=4096)]
    include: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    exclude: Patterns | None = None


class Edit(_Body):
    find: Annotated[str, Field(min_length=1)]
    replace: str = ""


class EditFileBody(_Body):
    path: Path
    edits: Annotated[list[Edit], Field(min_length=1, max_length=100)]


class EditFilesBody(_Body):
    files: Annotated[list[Path], Field(min_length=1, max_length=1000)]
    find: Annotated[str, Field(min_length=1)]
    replace: str = ""


class MoveBody(_Body):
    src_path: Path
    dst_path: Path
    overwrite: bool = False


class CopyBody(_Body):
    src_path: Path
    dst_path: Path
    recursive: bool = False
    overwrite: bool | None = None


class TreeBody(_Body):
    path: Path
    max_depth: Annotated[int, Field(ge=1, le=1000, strict=True)] | None = None
    exclude: Patterns | None = None
