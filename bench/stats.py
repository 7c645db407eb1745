"""Percentiles of latencies measured one by one (the sections that keep
every sample; the scenario runner keeps an HDR histogram instead)."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value below which a share `q` (0..1) of `values` fall: the sample
    at that rank (0.0 for no samples)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
