"""Percentiles and the one table format every benchmark prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def row(name: str, samples_ms: Sequence[float], baseline_ms: Sequence[float] | None = None) -> str:
    p50, p95, p99 = (percentile(samples_ms, q) for q in (50, 95, 99))
    text = f"{name:<34} n={len(samples_ms):<4} p50={p50:8.2f} ms  p95={p95:8.2f} ms  p99={p99:8.2f} ms"
    if baseline_ms:
        ratio = statistics.median(samples_ms) / statistics.median(baseline_ms)
        text += f"  ({ratio:.2f}x baseline p50)"
    return text
