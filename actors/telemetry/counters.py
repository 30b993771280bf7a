"""What replay folds from the telemetry kinds: counters, and the latest global summary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from actors.core import Message, UnknownEvent, digest_plain
from leyline import pb

__all__ = ["TelemetryCounters", "digest", "evolve", "from_plain", "initial_state", "to_plain"]


@dataclass(frozen=True, slots=True)
class TelemetryCounters:
    """How many summaries and critical events a run produced, and the raw items they cover."""

    region_summaries: int = 0
    global_summaries: int = 0
    critical: int = 0
    raw_summarised: int = 0
    last_step: int = 0


def initial_state() -> TelemetryCounters:
    """All zero."""
    return TelemetryCounters()


def evolve(state: TelemetryCounters, event: Message) -> TelemetryCounters:
    """Fold a RegionSummary, GlobalSummary or CriticalEvent."""
    if isinstance(event, pb.RegionSummary):
        return replace(
            state,
            region_summaries=state.region_summaries + 1,
            raw_summarised=state.raw_summarised + event.raw_count,
            last_step=max(state.last_step, event.step_to),
        )
    if isinstance(event, pb.GlobalSummary):
        return replace(
            state,
            global_summaries=state.global_summaries + 1,
            last_step=max(state.last_step, event.step_to),
        )
    if isinstance(event, pb.CriticalEvent):
        return replace(
            state, critical=state.critical + 1, last_step=max(state.last_step, event.event.step)
        )
    raise UnknownEvent(f"telemetry counters do not fold {type(event).__name__}")


def to_plain(state: TelemetryCounters) -> dict[str, Any]:
    """JSON-able form."""
    return {name: getattr(state, name) for name in TelemetryCounters.__slots__}


def from_plain(plain: dict[str, Any]) -> TelemetryCounters:
    """Inverse of ``to_plain``."""
    return TelemetryCounters(**{k: int(v) for k, v in plain.items()})


def digest(state: TelemetryCounters) -> bytes:
    """sha256 of the canonical encoding."""
    return digest_plain(to_plain(state))
