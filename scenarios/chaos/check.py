"""Pure comparison of a run's record with the fault-free reference of the same plan.

A ``RunRecord`` is what a run leaves behind, reduced to what must not depend on faults: per slot
the sequence of transitions ``(from, to)`` and refusals ``(stage, request)``, the final stages, and
per planned command its outcome and how many lifecycle events its own decision wrote. Message ids
differ between runs; planned command indices do not, so commands are compared by index.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.replay import fold_events, verify_digests
from actors.seed.lifecycle import is_allowed, stage_name
from leyline import pb

__all__ = ["LogEntry", "RunRecord", "compare", "record_of"]

LogEntry = tuple[str, str, Any, str]  # (entry_id, kind, message, causation_id)
_LIFECYCLE = ("lifecycle.transition", "lifecycle.refused", "lifecycle.progress")


@dataclass
class RunRecord:
    """The fault-independent part of a run, plus its integrity findings."""

    sequences: dict[str, list[str]] = field(default_factory=dict)
    final: dict[str, str] = field(default_factory=dict)
    outcomes: dict[int, str] = field(default_factory=dict)
    decision_sizes: dict[int, int] = field(default_factory=dict)
    command_rejections: dict[int, dict[str, int]] = field(default_factory=dict)
    illegal: list[str] = field(default_factory=list)
    digest_mismatches: list[dict[str, Any]] = field(default_factory=list)
    replay_error: str = ""
    transitions: int = 0
    events: int = 0


def _outcome(events: list[LogEntry], rejections: Mapping[str, int]) -> str:
    for _, kind, msg, _ in events:
        if kind == "lifecycle.transition":
            return f"transition {stage_name(msg.from_stage)}->{stage_name(msg.to_stage)}"
        if kind == "lifecycle.refused":
            return f"refused {msg.request} in {stage_name(msg.stage)}"
    if events:
        return "accepted"
    if rejections:
        return "rejected " + ",".join(sorted(rejections))
    return "missing"


def record_of(
    log: Iterable[LogEntry],
    rejections: Iterable[pb.Rejection],
    command_ids: Mapping[int, str],
) -> RunRecord:
    """Reduce a run's event log and rejected records to a :class:`RunRecord`."""
    entries = list(log)
    rec = RunRecord(events=len(entries))
    by_cause: dict[str, list[LogEntry]] = {}
    for entry in entries:
        _, kind, msg, cause = entry
        if kind not in _LIFECYCLE:
            continue
        by_cause.setdefault(cause, []).append(entry)
        seq = rec.sequences.setdefault(msg.slot, [])
        if kind == "lifecycle.transition":
            rec.transitions += 1
            if not is_allowed(msg.from_stage, msg.to_stage):
                rec.illegal.append(
                    f"{msg.slot}: {stage_name(msg.from_stage)}->{stage_name(msg.to_stage)}"
                )
            seq.append(f"{stage_name(msg.from_stage)}->{stage_name(msg.to_stage)}")
        elif kind == "lifecycle.refused":
            seq.append(f"refused {msg.request} in {stage_name(msg.stage)}")
    rejected: dict[str, Counter[str]] = {}
    for r in rejections:
        if r.message_id:
            rejected.setdefault(r.message_id, Counter())[r.reason_code] += 1
    for index, cid in command_ids.items():
        own = by_cause.get(cid, [])
        rec.decision_sizes[index] = len(own)
        rec.command_rejections[index] = dict(rejected.get(cid, {}))
        rec.outcomes[index] = _outcome(own, rec.command_rejections[index])
    triples = [(e, k, m) for e, k, m, _ in entries]
    try:
        state = fold_events(triples)
        rec.final = {slot: stage_name(s.stage) for slot, s in sorted(state.seeds.items())}
        rec.digest_mismatches = verify_digests(triples)
    except Exception as exc:  # a gap, a duplicate or an illegal event: the log is broken
        rec.replay_error = f"{type(exc).__name__}: {exc}"
    return rec


def compare(reference: RunRecord, run: RunRecord) -> list[str]:
    """Every difference that means a lost, duplicated or illegal transition (empty: equivalent)."""
    problems: list[str] = []
    if run.replay_error:
        problems.append(f"replay failed: {run.replay_error}")
    if run.digest_mismatches:
        problems.append(f"{len(run.digest_mismatches)} state digests do not re-fold")
    problems += [f"illegal transition {t}" for t in run.illegal]
    problems += _sequence_problems(reference, run)
    if reference.final != run.final:
        problems.append(f"final stages differ: {reference.final} vs {run.final}")
    return problems + _outcome_problems(reference, run)


def _sequence_problems(reference: RunRecord, run: RunRecord) -> list[str]:
    """Per slot whose lifecycle differs from the reference's: where, and the lengths."""
    problems = []
    for slot in sorted(set(reference.sequences) | set(run.sequences)):
        want, got = reference.sequences.get(slot, []), run.sequences.get(slot, [])
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
            at = min(len(want), len(got)) if at is None else at
            problems.append(
                f"{slot}: lifecycle differs at #{at}: reference {want[at : at + 2]} vs {got[at : at + 2]}"
                f" ({len(want)} vs {len(got)} entries)"
            )
    return problems


def _outcome_problems(reference: RunRecord, run: RunRecord) -> list[str]:
    """Per planned command: no outcome, another outcome, or another number of events written."""
    problems = []
    for index in sorted(set(reference.outcomes) | set(run.outcomes)):
        want_o, got_o = reference.outcomes.get(index), run.outcomes.get(index)
        if got_o == "missing":
            problems.append(f"command #{index} has no outcome")
        elif want_o != got_o:
            problems.append(f"command #{index}: {want_o} vs {got_o}")
        elif reference.decision_sizes.get(index) != run.decision_sizes.get(index):
            problems.append(
                f"command #{index} wrote {run.decision_sizes.get(index)} events, reference "
                f"{reference.decision_sizes.get(index)} (applied more than once?)"
            )
    return problems
