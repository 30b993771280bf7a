"""Reject-storm detection: too many rejected messages inside a wall-clock window.

Rejections are already recorded on the rejected stream, so this tracker is live-only state (like
a rate limiter): it is not folded from events. Time comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.config import SafetyConfig
from leyline import pb

__all__ = ["RejectStorm", "note_reject", "unnote_reject"]


@dataclass(frozen=True, slots=True)
class RejectStorm:
    """The rejections inside the current window: ``(time in seconds, how many)`` per call."""

    times: tuple[tuple[float, int], ...] = ()
    storms: int = 0
    quiet_until: float = 0.0  # no further signal before this time (one verdict per quiet period)


def note_reject(
    tracker: RejectStorm,
    now_s: float,
    config: SafetyConfig,
    *,
    step: int = 0,
    detail: str = "",
    count: int = 1,
) -> tuple[RejectStorm, pb.SafetySignal | None]:
    """Record ``count`` rejections at ``now_s``; a signal when more than ``reject_storm_count``
    fall inside ``reject_storm_window_s`` (the window then starts afresh, so one storm = one
    signal). After a signal, a continuing storm raises no other one for ``reject_storm_quiet_s``:
    a flood adds at most one verdict to the event log per quiet period, however long it lasts.
    The cost is one step per call inside the window, whatever ``count`` is (a flood's rejections
    in aggregate are one call)."""
    if now_s < tracker.quiet_until:
        return tracker, None
    horizon = now_s - config.reject_storm_window_s
    times = (*(t for t in tracker.times if t[0] > horizon), (now_s, count))
    total = sum(n for _, n in times)
    if total <= config.reject_storm_count:
        return RejectStorm(times, tracker.storms, tracker.quiet_until), None
    signal = pb.SafetySignal(
        kind=pb.SafetySignalKind.SAFETY_SIGNAL_REJECT_STORM,
        step=step,
        value=float(total),
        detail=detail or f"{total} rejections in {config.reject_storm_window_s:g} s",
    )
    return RejectStorm((), tracker.storms + 1, now_s + config.reject_storm_quiet_s), signal


def unnote_reject(tracker: RejectStorm, count: int) -> RejectStorm:
    """``tracker`` with ``count`` rejections taken back from its newest notes (records that were
    never written): they no longer count towards a storm."""
    times = list(tracker.times)
    while count > 0 and times:
        at, n = times.pop()
        if n > count:
            times.append((at, n - count))
        count -= n
    return RejectStorm(tuple(times), tracker.storms, tracker.quiet_until)
