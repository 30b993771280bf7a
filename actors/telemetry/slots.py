"""The latest raw telemetry of each slot: what a Prometheus scrape shows from the first report.

Pure and cheap (one dict store per raw item, no copy): the aggregator's summaries close only every
``region_ratio`` items and merge slots, so per-slot gauges read this board instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from leyline import pb

__all__ = ["SlotBoard", "SlotView"]


@dataclass(frozen=True, slots=True)
class SlotView:
    """One slot's latest raw item."""

    slot: str
    step: int
    metrics: Mapping[str, float]
    items: int  # raw items seen for this slot

    @property
    def stage(self) -> int:
        """The slot's lifecycle stage (``pb.SeedLifecycleStage`` value; 0 when not reported)."""
        return int(self.metrics.get("stage", 0.0))

    @property
    def alpha(self) -> float:
        """The slot's blend factor."""
        return float(self.metrics.get("alpha", 0.0))


class SlotBoard:
    """Latest raw item per slot (CRITICAL events are not slots'), and the latest runtime-wide
    item (no slot: the kernel cache's counters) per region."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[int, Mapping[str, float], int]] = {}
        self._runtime: dict[str, tuple[int, Mapping[str, float], int]] = {}

    def note(self, raw: pb.TelemetryRaw) -> None:
        """Record ``raw`` if it is not older than what is held for its slot (or region)."""
        if raw.severity == pb.SEVERITY_CRITICAL:
            return
        table, key = (self._latest, raw.slot) if raw.slot else (self._runtime, raw.region)
        held = table.get(key)
        if held is not None and raw.step < held[0]:
            table[key] = (held[0], held[1], held[2] + 1)
            return
        table[key] = (raw.step, raw.metrics, (held[2] if held else 0) + 1)

    def note_many(self, items: Iterable[pb.TelemetryRaw]) -> None:
        """Record every item of a batch."""
        for raw in items:
            self.note(raw)

    def views(self) -> list[SlotView]:
        """Every slot's latest item, by slot id."""
        return [
            SlotView(slot, step, dict(metrics), n)
            for slot, (step, metrics, n) in sorted(self._latest.copy().items())  # scrape thread
        ]

    def runtime_views(self) -> list[SlotView]:
        """Every region's latest runtime-wide item (``slot`` holds the region), by region."""
        return [
            SlotView(region, step, dict(metrics), n)
            for region, (step, metrics, n) in sorted(self._runtime.copy().items())
        ]
