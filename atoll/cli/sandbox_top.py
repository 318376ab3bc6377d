"""``atoll sandbox top ID``: a sandbox's resource use, live (``spec/processes.md``).

It polls ``sandbox.metrics()`` (the server samples every few seconds) and redraws one Rich
panel: the latest CPU, memory, disk, network and pids, network rates from the last two samples,
and the CPU of recent samples as a sparkline. ``--once`` prints the panel and exits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

_BARS = " ▁▂▃▄▅▆▇█"
_HISTORY = 40  # samples in the sparkline


def _bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


def _sparkline(values: Sequence[float]) -> str:
    return "".join(_BARS[min(len(_BARS) - 1, round(v / 100 * (len(_BARS) - 1)))] for v in values)


def _rate(samples: Sequence[Any], field: str) -> str:
    if len(samples) < 2:
        return "-"
    a, b = samples[-2], samples[-1]
    seconds = (datetime.fromisoformat(b.timestamp) - datetime.fromisoformat(a.timestamp)).total_seconds()
    if seconds <= 0:
        return "-"
    return f"{max(0, getattr(b, field) - getattr(a, field)) / seconds / 1024:.1f} KiB/s"


def render(sandbox_id: str, samples: Sequence[Any]) -> Panel:
    """The panel for the samples kept so far (oldest first)."""
    if not samples:
        body: Any = Text("no samples yet: the server takes one every few seconds while it runs")
        return Panel(body, title=f"sandbox {sandbox_id}")
    s = samples[-1]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_column(justify="right")
    table.add_row("CPU", _bar(s.cpu_used_pct / 100), f"{s.cpu_used_pct:.1f}% of {s.cpu_count} vCPU")
    table.add_row(
        "Memory",
        _bar(s.mem_used_mib / s.mem_total_mib if s.mem_total_mib else 0),
        f"{s.mem_used_mib:.0f} / {s.mem_total_mib:.0f} MiB",
    )
    table.add_row(
        "Disk",
        _bar(s.disk_used_mib / s.disk_total_mib if s.disk_total_mib else 0),
        f"{s.disk_used_mib:.0f} / {s.disk_total_mib:.0f} MiB",
    )
    table.add_row("Net in", _rate(samples, "net_rx_bytes"), f"{s.net_rx_bytes} B")
    table.add_row("Net out", _rate(samples, "net_tx_bytes"), f"{s.net_tx_bytes} B")
    table.add_row("Pids", "", str(s.pids))
    history = Text("CPU " + _sparkline([x.cpu_used_pct for x in samples[-_HISTORY:]]), style="cyan")
    return Panel(Group(table, history), title=f"sandbox {sandbox_id}", subtitle=s.timestamp)


def top(sandbox: Any, console: Console, *, interval_s: float, once: bool) -> None:
    if once:
        console.print(render(sandbox.id, sandbox.metrics()))
        return
    with Live(render(sandbox.id, sandbox.metrics()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(render(sandbox.id, sandbox.metrics()), refresh=True)
        except KeyboardInterrupt:
            pass
