"""TelemetryActor core: three-tier aggregation, critical bypass, rate limits, Prometheus text."""

from actors.telemetry.aggregator import TelemetryAggregator, TelemetryStats
from actors.telemetry.counters import TelemetryCounters
from actors.telemetry.prometheus import CONTENT_TYPE, build_registry, render

__all__ = [
    "CONTENT_TYPE",
    "TelemetryAggregator",
    "TelemetryCounters",
    "TelemetryStats",
    "build_registry",
    "render",
]
