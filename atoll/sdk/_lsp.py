"""What ``sandbox.lsp`` answers and checks, shared by the async and the sync client."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from atoll._exceptions import InvalidArgument, MalformedResponseError

LANGUAGES = ("python", "typescript", "javascript")


@dataclass(frozen=True)
class LspError:
    code: int
    message: str
    data: Any = None


@dataclass(frozen=True)
class LspResponse:
    """The JSON-RPC answer of the language server, as it sent it."""

    jsonrpc: str
    id: int | str | None
    result: Any
    error: LspError | None = None

    @classmethod
    def from_wire(cls, data: Any) -> LspResponse:
        if not isinstance(data, dict) or "jsonrpc" not in data:
            raise MalformedResponseError(f"expected a JSON-RPC answer, got {str(data)[:200]!r}")
        error = data.get("error")
        return cls(
            jsonrpc=str(data["jsonrpc"]),
            id=data.get("id"),
            result=data.get("result"),
            error=LspError(int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
            if isinstance(error, dict)
            else None,
        )


def file_uri(path: str) -> str:
    """``file://`` URI of an absolute sandbox path."""
    if not path.startswith("/"):
        raise InvalidArgument("path", f"must be absolute, got {path!r}")
    return "file://" + urllib.parse.quote(path)


def language(language_id: str) -> str:
    if language_id not in LANGUAGES:
        raise InvalidArgument("language_id", f"must be one of {', '.join(LANGUAGES)}, got {language_id!r}")
    return language_id
