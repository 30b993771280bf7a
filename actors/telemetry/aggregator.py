"""Three-tier telemetry aggregation: raw per slot -> region summaries -> global summaries.

``TelemetryAggregator`` is a deterministic state machine with no I/O and no clock: the same
inputs (raw items and the ``now_s`` passed with them) give the same outputs. It keeps its
accumulators mutable on purpose — it sits on the hottest path of the system (target: well over
100k raw metrics per second in one Python thread) — and exposes immutable snapshots (``stats``).

- Every ``region_ratio`` accepted raw items of a region -> one ``pb.RegionSummary`` (count, mean,
  min, max, last per metric name, names sorted).
- Every ``global_ratio`` region summaries -> one ``pb.GlobalSummary`` merging them.
- A raw item with severity CRITICAL -> ``pb.CriticalEvent`` at once: not aggregated, not rate
  limited.
- A token bucket per region (``rate_per_s`` tokens per second, ``burst`` capacity) admits raw
  items; the excess is dropped and counted (``stats.dropped``, per region).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from actors.core import Decision
from contracts.config import TelemetryConfig
from contracts.errors import Reason
from leyline import pb

__all__ = ["TelemetryAggregator", "TelemetryStats"]

_CRITICAL = pb.Severity.SEVERITY_CRITICAL


@dataclass(frozen=True, slots=True)
class TelemetryStats:
    """Counters of an aggregator."""

    raw_in: int
    accepted: int
    dropped: int
    critical: int
    region_summaries: int
    global_summaries: int
    dropped_by_region: tuple[tuple[str, int], ...]


class _Region:
    __slots__ = ("acc", "count", "dropped", "last_s", "step_from", "step_to", "tokens")

    def __init__(self, burst: float, now_s: float) -> None:
        self.acc: dict[str, list[float]] = {}
        self.count = 0
        self.step_from = 0
        self.step_to = 0
        self.tokens = burst
        self.last_s = now_s
        self.dropped = 0


def _accumulate(acc: dict[str, list[float]], metrics: Mapping[str, float]) -> None:
    """Add one item's metrics to a region's cells: [count, sum, min, max, last] per name."""
    for key, value in metrics.items():
        cell = acc.get(key)
        if cell is None:
            acc[key] = [1.0, value, value, value, value]
        else:
            cell[0] += 1.0
            cell[1] += value
            if value < cell[2]:
                cell[2] = value
            if value > cell[3]:
                cell[3] = value
            cell[4] = value


class TelemetryAggregator:
    """Aggregates raw telemetry; ``ingest`` returns the summaries/critical events it produced."""

    def __init__(self, config: TelemetryConfig | None = None) -> None:
        self.config = config or TelemetryConfig()
        self._regions: dict[str, _Region] = {}
        self._pending: list[pb.RegionSummary] = []
        self._raw_in = 0
        self._accepted = 0
        self._critical = 0
        self._region_summaries = 0
        self._global_summaries = 0
        self.latest_global: pb.GlobalSummary | None = None

    # ------------------------------------------------------------------ input

    def decide(self, msg: Message, now_s: float) -> Decision:
        """Shell entry point: a TelemetryRaw or TelemetryBatch -> summaries/critical as events."""
        if isinstance(msg, pb.TelemetryRaw):
            return Decision(events=tuple(self.ingest(msg, now_s)))
        if isinstance(msg, pb.TelemetryBatch):
            return Decision(events=tuple(self.ingest_many(msg.items, now_s)))
        return Decision.refuse(
            Reason.UNEXPECTED_KIND, f"TelemetryActor does not handle {type(msg).__name__}"
        )

    def ingest(self, raw: pb.TelemetryRaw, now_s: float) -> list[Message]:
        """Take one raw item observed at ``now_s`` (seconds, any monotonic origin)."""
        out: list[Message] = []
        self._ingest(raw, now_s, out)
        return out

    def ingest_many(self, items: Iterable[pb.TelemetryRaw], now_s: float) -> list[Message]:
        """Take a batch (e.g. ``pb.TelemetryBatch.items``) observed at ``now_s``."""
        out: list[Message] = []
        for raw in items:
            self._ingest(raw, now_s, out)
        return out

    def _ingest(self, raw: pb.TelemetryRaw, now_s: float, out: list[Message]) -> None:
        self._raw_in += 1
        if raw.severity == _CRITICAL:
            self._critical += 1
            event = pb.CriticalEvent()
            event.event.CopyFrom(raw)
            out.append(event)
            return
        cfg = self.config
        name = raw.region or raw.slot or "default"
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = _Region(float(cfg.burst), now_s)
        elapsed = now_s - region.last_s  # the region's token bucket
        if elapsed > 0.0:
            region.tokens = min(float(cfg.burst), region.tokens + elapsed * cfg.rate_per_s)
            region.last_s = now_s
        if region.tokens < 1.0:
            region.dropped += 1
            return
        region.tokens -= 1.0
        self._accepted += 1
        step = raw.step
        if region.count == 0:
            region.step_from = step
        region.step_to = step
        region.count += 1
        _accumulate(region.acc, raw.metrics)
        if region.count >= cfg.region_ratio:
            self._close_region(name, region, out)

    # ------------------------------------------------------------------ summaries

    def _close_region(self, name: str, region: _Region, out: list[Message]) -> None:
        summary = pb.RegionSummary(
            region=name,
            step_from=region.step_from,
            step_to=region.step_to,
            raw_count=region.count,
        )
        for key in sorted(region.acc):
            n, total, lo, hi, last = region.acc[key]
            summary.metrics.add(name=key, count=int(n), mean=total / n, min=lo, max=hi, last=last)
        region.acc = {}
        region.count = 0
        self._region_summaries += 1
        out.append(summary)
        self._pending.append(summary)
        if len(self._pending) >= self.config.global_ratio:
            out.append(self._close_global())

    def _close_global(self) -> pb.GlobalSummary:
        regions, self._pending = self._pending, []
        merged: dict[str, list[float]] = {}
        for summary in regions:
            for m in summary.metrics:
                cell = merged.get(m.name)
                if cell is None:
                    merged[m.name] = [float(m.count), m.mean * m.count, m.min, m.max, m.last]
                else:
                    cell[0] += m.count
                    cell[1] += m.mean * m.count
                    cell[2] = min(cell[2], m.min)
                    cell[3] = max(cell[3], m.max)
                    cell[4] = m.last
        result = pb.GlobalSummary(
            step_from=min(s.step_from for s in regions),
            step_to=max(s.step_to for s in regions),
            region_count=len(regions),
            raw_count=sum(s.raw_count for s in regions),
        )
        for key in sorted(merged):
            n, total, lo, hi, last = merged[key]
            result.metrics.add(name=key, count=int(n), mean=total / n, min=lo, max=hi, last=last)
        self._global_summaries += 1
        self.latest_global = result
        return result

    def flush(self) -> list[Message]:
        """Close every partial region summary and the partial global summary (e.g. at shutdown)."""
        out: list[Message] = []
        for name in sorted(self._regions):
            region = self._regions[name]
            if region.count:
                self._close_region(name, region, out)
        if self._pending:
            out.append(self._close_global())
        return out

    @property
    def stats(self) -> TelemetryStats:
        """A snapshot of the counters."""
        dropped = tuple(sorted((n, r.dropped) for n, r in self._regions.items() if r.dropped))
        return TelemetryStats(
            raw_in=self._raw_in,
            accepted=self._accepted,
            dropped=sum(n for _, n in dropped),
            critical=self._critical,
            region_summaries=self._region_summaries,
            global_summaries=self._global_summaries,
            dropped_by_region=dropped,
        )
