"""Prometheus text rendering: per-slot gauges from the latest raw items, the latest global summary
and the aggregator's counters (serving it over HTTP is the shell's job).

Per slot (label ``slot``): ``kasmina_slot_stage`` (the ``SeedLifecycleStage`` number),
``kasmina_slot_stage_info{stage="TRAINING"}`` (1 for the current stage), ``kasmina_slot_alpha``,
``kasmina_slot_last_step``, ``kasmina_slot_reports`` and ``kasmina_slot_metric{metric=…}``
for every other value of the slot's latest report (gradient norms, isolation violations, …).
Per region, ``kasmina_runtime_metric{region=…, metric=…}``: the latest runtime-wide report (the
kernel cache's ``kernel_cache_*`` counters)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from actors.telemetry.aggregator import TelemetryStats
from actors.telemetry.slots import SlotView
from leyline import pb

__all__ = ["CONTENT_TYPE", "build_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATS = ("count", "mean", "min", "max", "last")
_STAGES = frozenset(pb.SeedLifecycleStage.values())


def build_registry(
    summary: pb.GlobalSummary | None,
    stats: TelemetryStats | None = None,
    slots: Sequence[SlotView] = (),
    runtime: Sequence[SlotView] = (),
) -> CollectorRegistry:
    """A fresh registry with gauges ``kasmina_metric_<stat>{metric=...}`` of ``summary``.

    With ``stats``, also ``kasmina_telemetry_<counter>`` gauges (raw in, accepted, dropped,
    critical, summaries); with ``slots``, the per-slot gauges of the module docstring.
    """
    registry = CollectorRegistry(auto_describe=True)
    _slot_gauges(registry, slots)
    if runtime:
        _runtime_gauges(registry, runtime)
    _summary_gauges(registry, summary)
    if stats is not None:
        _stats_gauges(registry, stats)
    return registry


def _runtime_gauges(registry: CollectorRegistry, runtime: Sequence[SlotView]) -> None:
    gauge = Gauge("kasmina_runtime_metric", "latest runtime-wide value (kernel_cache_*, …) "
                  "per region", ["region", "metric"], registry=registry)  # fmt: skip
    for view in runtime:
        for key, value in sorted(view.metrics.items()):
            gauge.labels(region=view.slot, metric=key).set(value)


def _summary_gauges(registry: CollectorRegistry, summary: pb.GlobalSummary | None) -> None:
    """``kasmina_metric_<stat>`` (registered even without a summary) and the summary's steps."""
    gauges = {
        stat: Gauge(
            f"kasmina_metric_{stat}",
            f"{stat} of each metric over the latest global telemetry summary",
            ["metric"],
            registry=registry,
        )
        for stat in _STATS
    }
    if summary is None:
        return
    for m in summary.metrics:
        for stat in _STATS:
            gauges[stat].labels(metric=m.name).set(float(getattr(m, stat)))
    window = Gauge(
        "kasmina_summary_step",
        "step range of the latest global summary",
        ["edge"],
        registry=registry,
    )
    window.labels(edge="from").set(summary.step_from)
    window.labels(edge="to").set(summary.step_to)


def _stats_gauges(registry: CollectorRegistry, stats: TelemetryStats) -> None:
    for name in (
        "raw_in",
        "accepted",
        "dropped",
        "critical",
        "region_summaries",
        "global_summaries",
    ):
        Gauge(
            f"kasmina_telemetry_{name}",
            f"telemetry {name.replace('_', ' ')}",
            registry=registry,
        ).set(getattr(stats, name))


def _slot_gauges(registry: CollectorRegistry, slots: Sequence[SlotView]) -> None:
    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"kasmina_slot_{name}", doc, ["slot", *labels], registry=registry)

    stage = gauge("stage", "lifecycle stage of the slot (SeedLifecycleStage number)")
    info = gauge("stage_info", "1 for the slot's current lifecycle stage", ["stage"])
    alpha = gauge("alpha", "blend factor of the slot's seed")
    last = gauge("last_step", "training step of the slot's latest report")
    reports = gauge("reports", "raw telemetry items received for the slot")
    metric = gauge("metric", "latest value of each metric of the slot's report", ["metric"])
    for view in slots:
        stage.labels(slot=view.slot).set(view.stage)
        name = (
            pb.SeedLifecycleStage.Name(pb.SeedLifecycleStage.ValueType(view.stage))
            if view.stage in _STAGES
            else "UNKNOWN"
        )
        info.labels(slot=view.slot, stage=name.removeprefix("SEED_STAGE_")).set(1)
        alpha.labels(slot=view.slot).set(view.alpha)
        last.labels(slot=view.slot).set(view.step)
        reports.labels(slot=view.slot).set(view.items)
        for key, value in sorted(view.metrics.items()):
            if key not in ("stage", "alpha"):
                metric.labels(slot=view.slot, metric=key).set(value)


def render(
    summary: pb.GlobalSummary | None,
    stats: TelemetryStats | None = None,
    slots: Sequence[SlotView] = (),
    runtime: Sequence[SlotView] = (),
) -> bytes:
    """The Prometheus text exposition of ``build_registry(summary, stats, slots, runtime)``."""
    return bytes(generate_latest(build_registry(summary, stats, slots, runtime)))
