"""TelemetryActor core: reduction, critical bypass, token bucket, Prometheus text, bench shape."""

from __future__ import annotations

from actors.core import fold
from actors.telemetry import TelemetryAggregator, TelemetryCounters, render
from actors.telemetry import counters as tc
from contracts.config import TelemetryConfig
from leyline import pb

CFG = TelemetryConfig(region_ratio=32, global_ratio=2)


def _raw(i: int, region: str = "r0", **metrics: float) -> pb.TelemetryRaw:
    return pb.TelemetryRaw(slot="s", region=region, step=i, metrics=metrics or {"loss": float(i)})


def test_region_summary_every_region_ratio_items() -> None:
    """32 raw items of a region -> one summary with count/mean/min/max/last per metric."""
    agg = TelemetryAggregator(CFG)
    out = []
    for i in range(32):
        out += agg.ingest(_raw(i, loss=float(i), acc=1.0), 0.0)
    (summary,) = out
    assert isinstance(summary, pb.RegionSummary)
    assert (summary.region, summary.raw_count, summary.step_from, summary.step_to) == (
        "r0",
        32,
        0,
        31,
    )
    loss = {m.name: m for m in summary.metrics}["loss"]
    assert (loss.count, loss.mean, loss.min, loss.max, loss.last) == (32, 15.5, 0.0, 31.0, 31.0)
    assert [m.name for m in summary.metrics] == ["acc", "loss"]


def test_global_summary_merges_region_summaries() -> None:
    """global_ratio region summaries -> one GlobalSummary with weighted means and extremes."""
    agg = TelemetryAggregator(CFG)
    out = []
    for i in range(32):
        out += agg.ingest(_raw(i, "a", loss=1.0), 0.0)
    for i in range(32):
        out += agg.ingest(_raw(100 + i, "b", loss=3.0), 0.0)
    glob = out[-1]
    assert isinstance(glob, pb.GlobalSummary)
    assert (glob.region_count, glob.raw_count, glob.step_from, glob.step_to) == (2, 64, 0, 131)
    (m,) = glob.metrics
    assert (m.count, m.mean, m.min, m.max, m.last) == (64, 2.0, 1.0, 3.0, 3.0)
    assert agg.latest_global == glob


def test_critical_bypasses_aggregation_and_rate_limit() -> None:
    """CRITICAL items come out at once as CriticalEvent, even when the bucket is empty."""
    agg = TelemetryAggregator(TelemetryConfig(region_ratio=32, rate_per_s=1.0, burst=1))
    agg.ingest(_raw(0), 0.0)
    assert agg.ingest(_raw(1), 0.0) == []  # dropped: bucket empty
    crit = pb.TelemetryRaw(
        slot="s", region="r0", step=2, severity=pb.SEVERITY_CRITICAL, message="nan"
    )
    (event,) = agg.ingest(crit, 0.0)
    assert isinstance(event, pb.CriticalEvent) and event.event.message == "nan"
    assert agg.stats.critical == 1 and agg.stats.dropped == 1


def test_token_bucket_per_region_drops_and_refills() -> None:
    """Excess raw items are dropped and counted per region; tokens refill with time."""
    agg = TelemetryAggregator(TelemetryConfig(region_ratio=32, rate_per_s=10.0, burst=5))
    for i in range(8):
        agg.ingest(_raw(i, "hot"), 0.0)
        if i < 5:
            agg.ingest(_raw(i, "cold"), 0.0)
    assert agg.stats.accepted == 10 and agg.stats.dropped_by_region == (("hot", 3),)
    agg.ingest(_raw(9, "hot"), 0.5)  # 5 tokens back
    assert agg.stats.accepted == 11


def test_flush_closes_partial_summaries() -> None:
    """flush() emits the partial region summaries and a partial global summary."""
    agg = TelemetryAggregator(CFG)
    for i in range(5):
        agg.ingest(_raw(i), 0.0)
    out = agg.flush()
    assert [type(m).__name__ for m in out] == ["RegionSummary", "GlobalSummary"]
    assert out[0].raw_count == 5  # type: ignore[attr-defined]


def test_decide_wraps_batches_as_events() -> None:
    """decide() turns a TelemetryBatch into events and rejects other kinds."""
    agg = TelemetryAggregator(CFG)
    batch = pb.TelemetryBatch(items=[_raw(i) for i in range(32)])
    assert len(agg.decide(batch, 0.0).events) == 1
    assert agg.decide(pb.Heartbeat(), 0.0).rejected


def test_counters_fold_summary_events() -> None:
    """Replay counters count region/global summaries, critical events and raw items covered."""
    agg = TelemetryAggregator(CFG)
    events = []
    for i in range(64):
        events += agg.ingest(_raw(i), 0.0)
    events += agg.ingest(pb.TelemetryRaw(severity=pb.SEVERITY_CRITICAL, step=70), 0.0)
    counters = fold(tc.evolve, tc.initial_state(), events)
    assert counters == TelemetryCounters(2, 1, 1, 64, 70)
    assert tc.from_plain(tc.to_plain(counters)) == counters


def test_prometheus_text_has_latest_global_gauges() -> None:
    """render() gives Prometheus text with a gauge per metric and stat."""
    agg = TelemetryAggregator(CFG)
    for i in range(64):
        agg.ingest(_raw(i, loss=2.0), 0.0)
    text = render(agg.latest_global, agg.stats).decode()
    assert 'kasmina_metric_mean{metric="loss"} 2.0' in text
    assert "kasmina_telemetry_accepted 64.0" in text
    assert "kasmina_metric_mean" in render(None).decode()


def test_bench_shape_and_reduction() -> None:
    """The bench returns the documented figures, a positive rate and at least 32:1 reduction."""
    from benchmarks.telemetry_bench import run_telemetry_bench

    figures = run_telemetry_bench(n=20_000, repeats=1)
    assert all(set(f) == {"bench", "value", "unit", "baseline", "ratio"} for f in figures)
    rate = next(f for f in figures if f["bench"] == "telemetry_raw_metrics_per_s")
    assert rate["value"] > 0 and rate["unit"]
    reduction = next(f for f in figures if f["bench"] == "telemetry_raw_to_region_reduction")
    assert reduction["value"] >= 32
