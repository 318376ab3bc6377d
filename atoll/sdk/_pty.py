"""PTY sessions' shapes (wire-protocol §9) and argument checks: pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from atoll._exceptions import InvalidArgument

SESSION_ID = re.compile(r"^[A-Za-z0-9._~:@+=-]{1,128}$")
SIZE_RANGE = (1, 1000)


@dataclass(frozen=True)
class PtySession:
    id: str
    cwd: str = ""
    envs: dict[str, str] = field(default_factory=dict)
    cols: int = 0
    rows: int = 0
    created_at: str = ""
    active: bool = False  # the shell runs (false before a lazy session's first connection, and after exit)
    lazy_start: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PtySession:
        envs = data.get("envs")
        return cls(
            id=str(data.get("id", "")),
            cwd=str(data.get("cwd", "")),
            envs={str(k): str(v) for k, v in envs.items()} if isinstance(envs, Mapping) else {},
            cols=int(data.get("cols", 0) or 0),
            rows=int(data.get("rows", 0) or 0),
            created_at=str(data.get("created_at", "")),
            active=bool(data.get("active", False)),
            lazy_start=bool(data.get("lazy_start", False)),
        )


def check_session_id(value: object) -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value.strip()):
        raise InvalidArgument(
            "session_id", f"must be 1-128 characters of letters, digits and ._~:@+=-, got {value!r}"
        )
    return value.strip()


def check_size(name: str, value: object) -> int:
    low, high = SIZE_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(name, f"must be an integer from {low} to {high}, got {value!r}")
    return value


def session_path(session_id: str, suffix: str = "") -> str:
    return f"/pty/{quote(check_session_id(session_id), safe='')}{suffix}"


def websocket_url(http_url: str) -> str:
    """``http(s)://...`` -> ``ws(s)://...``."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    if http_url.startswith("http://"):
        return "ws://" + http_url[len("http://") :]
    return http_url
