"""Values of live processes (``spec/processes.md``), decoded from the wire. Pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atoll._exceptions import MalformedResponseError

SIGNALS = ("SIGTERM", "SIGINT", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """One event of a process: ``stdout``/``stderr`` (``data``), ``exit`` (``exit_code``, last),
    or ``truncated`` (output older than what follows was dropped from the sandbox's ring)."""

    type: str
    seq: int | None = None
    data: str = ""
    exit_code: int | None = None

    @classmethod
    def from_json(cls, payload: str) -> ProcessEvent:
        try:
            data = json.loads(payload)
        except ValueError:
            raise MalformedResponseError(f"process event is not JSON: {payload[:80]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise MalformedResponseError(f"process event without a type: {payload[:80]!r}")
        seq, code, text = data.get("seq"), data.get("exit_code"), data.get("data", "")
        return cls(
            type=data["type"],
            seq=seq if isinstance(seq, int) else None,
            data=text if isinstance(text, str) else "",
            exit_code=code if isinstance(code, int) else None,
        )


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    command: str
    cwd: str | None = None
    tag: str | None = None
    started_at: str | None = None
    running: bool = False
    exit_code: int | None = None
    ended_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessInfo:
        pid = data.get("pid")
        if not isinstance(pid, int):
            raise MalformedResponseError("process without a pid")

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        code = data.get("exit_code")
        return cls(
            pid=pid,
            command=text("command") or "",
            cwd=text("cwd"),
            tag=text("tag"),
            started_at=text("started_at"),
            running=data.get("running") is True,
            exit_code=code if isinstance(code, int) else None,
            ended_at=text("ended_at"),
        )
