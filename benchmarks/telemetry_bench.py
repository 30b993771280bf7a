"""Telemetry aggregation throughput and reduction factors.

``run_telemetry_bench()`` returns figures ``{"bench", "value", "unit", "baseline", "ratio"}``:
raw metrics per second through ``TelemetryAggregator`` against a bare Python loop that only
appends the same values to a list (measured in the same run), and the raw -> region -> global
reduction factors against the configured ratios.
"""

from __future__ import annotations

import json
import time
from typing import Any

from actors.telemetry import TelemetryAggregator
from contracts.config import TelemetryConfig
from leyline import pb


def _items(n: int, metrics: int, regions: int) -> list[pb.TelemetryRaw]:
    names = [f"metric_{k}" for k in range(metrics)]
    return [
        pb.TelemetryRaw(
            slot=f"layer{i % (regions * 2)}.s0",
            region=f"region{i % regions}",
            step=i // regions,
            metrics={name: float(i % 97) * 0.5 + k for k, name in enumerate(names)},
        )
        for i in range(n)
    ]


def run_telemetry_bench(
    n: int = 100_000, metrics: int = 8, regions: int = 4, repeats: int = 3
) -> list[dict[str, Any]]:
    """Measure the aggregator and its reference loop; best of ``repeats`` for each."""
    config = TelemetryConfig()
    items = _items(n, metrics, regions)
    total = n * metrics
    dt = 1.0 / (0.5 * config.rate_per_s * regions)  # raw items arrive at half the admitted rate

    best_agg = float("inf")
    agg = TelemetryAggregator(config)
    for _ in range(repeats):
        agg = TelemetryAggregator(config)
        ingest = agg.ingest
        t0 = time.perf_counter()
        for i, raw in enumerate(items):
            ingest(raw, i * dt)
        best_agg = min(best_agg, time.perf_counter() - t0)

    best_base = float("inf")
    for _ in range(repeats):
        sink: list[float] = []
        append = sink.append
        t0 = time.perf_counter()
        for raw in items:
            for value in raw.metrics.values():
                append(value)
        best_base = min(best_base, time.perf_counter() - t0)

    stats = agg.stats
    rate = total / best_agg
    base = total / best_base
    region_factor = stats.accepted / max(stats.region_summaries, 1)
    global_factor = stats.region_summaries / max(stats.global_summaries, 1)
    return [
        {
            "bench": "telemetry_raw_metrics_per_s",
            "value": rate,
            "unit": "metrics/s",
            "baseline": base,
            "ratio": rate / base,
        },
        {
            "bench": "telemetry_raw_to_region_reduction",
            "value": region_factor,
            "unit": "raw items per region summary",
            "baseline": float(config.region_ratio),
            "ratio": region_factor / config.region_ratio,
        },
        {
            "bench": "telemetry_region_to_global_reduction",
            "value": global_factor,
            "unit": "region summaries per global summary",
            "baseline": float(config.global_ratio),
            "ratio": global_factor / config.global_ratio,
        },
        {
            "bench": "telemetry_dropped",
            "value": float(stats.dropped),
            "unit": "raw items",
            "baseline": 0.0,
            "ratio": 0.0,
        },
    ]


if __name__ == "__main__":
    for figure in run_telemetry_bench():
        print(json.dumps(figure))
