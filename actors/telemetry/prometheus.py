"""Prometheus text rendering of the latest global summary (serving it over HTTP is the shell's job)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from actors.telemetry.aggregator import TelemetryStats
from leyline import pb

__all__ = ["CONTENT_TYPE", "build_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATS = ("count", "mean", "min", "max", "last")


def build_registry(
    summary: pb.GlobalSummary | None, stats: TelemetryStats | None = None
) -> CollectorRegistry:
    """A fresh registry with gauges ``kasmina_metric_<stat>{metric=...}`` of ``summary``.

    With ``stats``, also ``kasmina_telemetry_<counter>`` gauges (raw in, accepted, dropped,
    critical, summaries).
    """
    registry = CollectorRegistry(auto_describe=True)
    gauges = {
        stat: Gauge(
            f"kasmina_metric_{stat}",
            f"{stat} of each metric over the latest global telemetry summary",
            ["metric"],
            registry=registry,
        )
        for stat in _STATS
    }
    if summary is not None:
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
    if stats is not None:
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
    return registry


def render(summary: pb.GlobalSummary | None, stats: TelemetryStats | None = None) -> bytes:
    """The Prometheus text exposition of ``build_registry(summary, stats)``."""
    return bytes(generate_latest(build_registry(summary, stats)))
