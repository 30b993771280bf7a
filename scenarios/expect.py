"""Check a scenario's expectations against what a run recorded (pure: no I/O).

``check(expect, observed)`` returns ``{expectation: what happened}`` for every expectation that does
not hold; an empty dict means the run passed. Expectation names: ``final_stage[slot]``,
``path[slot]``, ``gates[slot]``, ``transitions[i]``, ``refused[i]``, ``paused[slot]``,
``rejected[reason]``, ``events_present[kind]``, ``events_absent[kind]``, ``replay_verify``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.replay import RunState, fold_events, verify_digests
from actors.seed.lifecycle import gate_name, stage_name
from leyline import pb
from scenarios.model import Expectations, TransitionMatch

__all__ = ["Observed", "check", "observe", "stage_of"]

Event = tuple[str, str, Any]


@dataclass(frozen=True)
class Observed:
    """What a run left behind: its verified event log and its rejections by reason."""

    events: Sequence[Event]
    rejected: Mapping[str, int] = field(default_factory=dict)
    state: RunState = field(default_factory=RunState)
    digest_mismatches: Sequence[Mapping[str, Any]] = ()


def observe(events: Sequence[Event], rejected: Mapping[str, int]) -> Observed:
    """Fold the events and verify the recorded digests."""
    return Observed(events, dict(rejected), fold_events(events), verify_digests(events))


def _short_gate(gate: int) -> str:
    return gate_name(gate).split("_")[0]


def _path(events: Sequence[Event], slot: str) -> list[str]:
    return [
        stage_name(m.to_stage)
        for _, kind, m in events
        if kind == "lifecycle.transition" and m.slot == slot
    ]


def _gates(events: Sequence[Event], slot: str) -> list[tuple[str, bool]]:
    return [
        (_short_gate(m.gate), bool(m.passed))
        for _, kind, m in events
        if kind == "gate.result" and m.slot == slot
    ]


def _show_gates(results: Sequence[tuple[str, bool]]) -> str:
    return "[" + ", ".join(f"{g} {'passed' if ok else 'failed'}" for g, ok in results) + "]"


def _final(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    for slot, stage in expect.final_stage.items():
        got = seen.state.seeds.get(slot)
        name = stage_name(got.stage) if got is not None else "no events"
        if name != stage:
            out[f"final_stage[{slot}]"] = f"expected {stage}, got {name}"
    for slot, stages in expect.path.items():
        path = _path(seen.events, slot)
        if path != list(stages):
            out[f"path[{slot}]"] = f"expected {' > '.join(stages)}, got {' > '.join(path) or '-'}"


def _gates_and_pauses(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    for slot, results in expect.gates.items():
        want = [(r.gate, r.passed) for r in results]
        got_gates = _gates(seen.events, slot)
        if got_gates != want:
            out[f"gates[{slot}]"] = f"expected {_show_gates(want)}, got {_show_gates(got_gates)}"
    for slot, paused in expect.paused.items():
        seed = seen.state.seeds.get(slot)
        actual = bool(seed and seed.paused)
        if actual != paused:
            out[f"paused[{slot}]"] = f"expected paused={paused}, got paused={actual}"


def _transitions(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    transitions = [m for _, k, m in seen.events if k == "lifecycle.transition"]
    for i, t in enumerate(expect.transitions):
        mine = [m for m in transitions if m.slot == t.slot]
        if not any(
            stage_name(m.to_stage) == t.to and t.cause in m.cause and m.step >= t.min_step
            for m in mine
        ):
            out[f"transitions[{i}]"] = _missing_transition(t, mine, seen.events)


def _missing_transition(t: TransitionMatch, mine: list[Any], events: Sequence[Event]) -> str:
    """Why no transition of the slot matched: those into the stage, else the slot's path."""
    into = [f"{m.cause!r} at step {m.step}" for m in mine if stage_name(m.to_stage) == t.to]
    detail = f"got {', '.join(into)}" if into else f"path {' > '.join(_path(events, t.slot))}"
    since = f" at step {t.min_step} or later" if t.min_step else ""
    return (
        f"no transition of {t.slot} to {t.to} with cause containing {t.cause!r}{since}; " + detail
    )


def _refusals(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    refusals = [m for _, k, m in seen.events if k == "lifecycle.refused"]
    for i, r in enumerate(expect.refused):
        mine = [m for m in refusals if m.slot == r.slot]
        if not any(r.request in m.request and r.reason in m.reason for m in mine):
            got = [f"{m.request}: {m.reason}" for m in mine]
            out[f"refused[{i}]"] = (
                f"no refusal of {r.slot} for {r.request or 'any request'!r} with reason "
                f"containing {r.reason!r}; refusals {got}"
            )


def _log(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    for reason, count in expect.rejected.items():
        got = seen.rejected.get(reason, 0)
        if got != count:
            out[f"rejected[{reason}]"] = f"expected {count}, got {got}"
    kinds = Counter(kind for _, kind, _ in seen.events)
    for kind in expect.events_present:
        if not kinds[kind]:
            out[f"events_present[{kind}]"] = f"no {kind} event in {sum(kinds.values())} events"
    for kind in expect.events_absent:
        if kinds[kind]:
            out[f"events_absent[{kind}]"] = f"{kinds[kind]} {kind} event(s) recorded"


def _replay_verify(expect: Expectations, seen: Observed, out: dict[str, str]) -> None:
    if expect.replay_verify and seen.digest_mismatches:
        first = seen.digest_mismatches[0]
        out["replay_verify"] = (
            f"{len(seen.digest_mismatches)} digest mismatch(es), first at {first['entry_id']} "
            f"({first['actor']} {first['key']})"
        )
    if expect.replay_verify and not any(k == "state.digest" for _, k, _ in seen.events):
        out["replay_verify"] = "no state.digest entries were recorded"


def check(expect: Expectations, seen: Observed) -> dict[str, str]:
    """``{expectation: what happened}`` for every expectation that does not hold."""
    out: dict[str, str] = {}
    _final(expect, seen, out)
    _gates_and_pauses(expect, seen, out)
    _transitions(expect, seen, out)
    _refusals(expect, seen, out)
    _log(expect, seen, out)
    _replay_verify(expect, seen, out)
    return out


def stage_of(state: RunState, slot: str) -> str:
    """The slot's stage name in a folded state ("UNKNOWN" before its first event)."""
    seed = state.seeds.get(slot)
    return stage_name(seed.stage) if seed is not None else stage_name(pb.SEED_STAGE_UNKNOWN)
