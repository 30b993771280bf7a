"""Benchmarks: each reports figures as ratios against a baseline measured in the same run."""

from __future__ import annotations

from typing import Any


def figure(bench: str, value: float, unit: str, baseline: float) -> dict[str, Any]:
    """One figure in the ``kasmina bench --json`` format (docs/design.md §7)."""
    return {
        "bench": bench,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3) if baseline else None,
    }
