"""Values of ``sandbox.filesystem.watch`` and ``sandbox.metrics`` (``spec/processes.md``),
decoded from the wire. Pure, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atoll._exceptions import MalformedResponseError

WATCH_EVENT_TYPES = ("create", "write", "remove", "rename", "chmod", "overflow")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``create``, ``write``, ``remove``, ``chmod`` of ``path``; ``rename`` of
    ``path`` to ``new_path`` (None: moved out of the watched tree); or ``overflow`` (changes
    were lost: the watcher fell behind, or a recursive watch reached its cap)."""

    type: str
    path: str = ""
    is_dir: bool = False
    new_path: str | None = None

    @classmethod
    def from_json(cls, payload: str) -> WatchEvent:
        try:
            data = json.loads(payload)
        except ValueError:
            raise MalformedResponseError(f"watch event is not JSON: {payload[:80]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise MalformedResponseError(f"watch event without a type: {payload[:80]!r}")
        path, new_path = data.get("path", ""), data.get("new_path")
        return cls(
            type=data["type"],
            path=path if isinstance(path, str) else "",
            is_dir=data.get("is_dir") is True,
            new_path=new_path if isinstance(new_path, str) else None,
        )


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """A sandbox's resource use at ``timestamp`` (ISO 8601); ``cpu_used_pct`` is of all its
    ``cpu_count`` vCPUs together; network counters cover the sandbox's current boot."""

    timestamp: str
    cpu_count: int
    cpu_used_pct: float
    mem_used_mib: float
    mem_total_mib: float
    disk_used_mib: float
    disk_total_mib: float
    net_rx_bytes: int
    net_tx_bytes: int
    pids: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricsSample:
        try:
            return cls(
                timestamp=str(data["timestamp"]),
                cpu_count=int(data["cpu_count"]),
                cpu_used_pct=float(data["cpu_used_pct"]),
                mem_used_mib=float(data["mem_used_mib"]),
                mem_total_mib=float(data["mem_total_mib"]),
                disk_used_mib=float(data["disk_used_mib"]),
                disk_total_mib=float(data["disk_total_mib"]),
                net_rx_bytes=int(data["net_rx_bytes"]),
                net_tx_bytes=int(data["net_tx_bytes"]),
                pids=int(data["pids"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedResponseError(f"bad metrics sample: {exc!r}") from None


def samples(body: object) -> list[MetricsSample]:
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MalformedResponseError("metrics answer without a list of items")
    return [MetricsSample.from_dict(i) for i in items]
