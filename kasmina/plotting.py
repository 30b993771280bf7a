"""``kasmina replay --plot``: the demo's plot for any run, from its event log (and step reports).

Per-slot stages come from the lifecycle transitions, alpha and validation accuracy from the step
reports the SeedActors recorded (``lifecycle.progress`` with ``step_report``), and the losses from
the step reports still in the slots' inboxes (absent once retention trimmed them: NaN).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leyline import pb

if TYPE_CHECKING:
    from scenarios.demo.runner import History

__all__ = ["history_of", "write_run_plot"]


def history_of(
    events: Sequence[tuple[str, str, Any]], reports: Iterable[pb.StepReport] = ()
) -> Any:
    """A :class:`scenarios.demo.runner.History` sampled at every recorded step report."""
    from scenarios.demo.runner import History

    moves, samples = _moves_and_samples(events)
    losses = {int(r.step): (r.loss, r.val_loss) for r in reports if r.rank == 0}
    slots = sorted(set(moves) | {s for per in samples.values() for s in per})
    h = History(stages={s: [] for s in slots}, alphas={s: [] for s in slots})
    alpha = dict.fromkeys(slots, 0.0)
    for step in sorted(samples):
        per = samples[step]
        _append_measures(h, step, per, losses)
        for slot in slots:
            if slot in per:
                alpha[slot] = per[slot][0]
            h.stages[slot].append(_stage_at(moves.get(slot, []), step))
            h.alphas[slot].append(alpha[slot])
    return h


def _append_measures(
    h: History,
    step: int,
    per: dict[str, tuple[float, float]],
    losses: dict[int, tuple[float, float]],
) -> None:
    """The step's losses (NaN without a step report) and the first slot's measured accuracy."""
    accs = [acc for _, acc in per.values() if math.isfinite(acc)]
    loss, val_loss = losses.get(step, (math.nan, math.nan))
    h.steps.append(step)
    h.train_loss.append(loss or math.nan)
    h.val_loss.append(val_loss or math.nan)
    h.val_acc.append(accs[0] if accs else math.nan)


def _moves_and_samples(
    events: Sequence[tuple[str, str, Any]],
) -> tuple[dict[str, list[tuple[int, int]]], dict[int, dict[str, tuple[float, float]]]]:
    """Per slot its transitions ``(step, to_stage)``; per recorded step report the slots'
    ``(alpha, validation accuracy)`` (NaN when not measured)."""
    moves: dict[str, list[tuple[int, int]]] = {}
    samples: dict[int, dict[str, tuple[float, float]]] = {}
    for _, kind, message in events:
        if kind == "lifecycle.transition":
            moves.setdefault(message.slot, []).append((int(message.step), int(message.to_stage)))
        elif kind == "lifecycle.progress" and message.step_report:
            samples.setdefault(int(message.step), {})[message.slot] = (
                float(message.alpha),
                float(message.val_acc) if message.val_acc else math.nan,
            )
    return moves, samples


def _stage_at(moves: list[tuple[int, int]], step: int) -> int:
    """The stage a slot with these transitions is in at ``step`` (DORMANT before the first)."""
    stage = int(pb.SEED_STAGE_DORMANT)
    for at, to in moves:
        if at <= step:
            stage = to
    return int(stage)


def write_run_plot(
    events: Sequence[tuple[str, str, Any]],
    reports: Iterable[pb.StepReport],
    run: str,
    path: Path,
) -> int:
    """Write the plot of ``run`` to ``path``; returns the number of steps sampled."""
    from scenarios.demo.report import plot_history

    h = history_of(events, reports)
    if not h.steps:
        raise ValueError(f"run {run!r} has no step reports to plot")
    plot_history(h, f"Kasmina run {run}", path)
    return len(h.steps)
