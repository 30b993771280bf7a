"""GateActor core: a GateRequest becomes a GateResult (an event, and a message to the slot)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from actors.core import Context, Decision, Message, Outgoing, UnknownEvent, digest_plain
from actors.gates.checks import evaluate
from contracts.errors import Reason
from leyline import pb

__all__ = ["GateState", "decide", "digest", "evolve", "from_plain", "initial_state", "to_plain"]


@dataclass(frozen=True, slots=True)
class GateState:
    """Counters of the gate results folded so far (the results themselves live in the stream)."""

    evaluated: int = 0
    passed: int = 0
    failed_by_gate: tuple[tuple[int, int], ...] = ()  # (gate number, failures), sorted


def initial_state() -> GateState:
    """No results yet."""
    return GateState()


def decide(state: GateState, msg: Message, ctx: Context) -> Decision:
    """Evaluate a GateRequest with ``ctx.config.gates``; anything else is rejected."""
    if not isinstance(msg, pb.GateRequest):
        return Decision.refuse(
            Reason.UNEXPECTED_KIND, f"GateActor does not handle {type(msg).__name__}"
        )
    result = evaluate(msg.gate, msg.evidence, ctx.config.gates)
    result.request_id = msg.request_id
    result.slot = msg.slot
    result.step = msg.step
    return Decision(events=(result,), outgoing=(Outgoing("seed", msg.slot, result),))


def evolve(state: GateState, event: Message) -> GateState:
    """Fold one GateResult."""
    if not isinstance(event, pb.GateResult):
        raise UnknownEvent(f"GateActor does not fold {type(event).__name__}")
    if event.passed:
        return replace(state, evaluated=state.evaluated + 1, passed=state.passed + 1)
    failures = dict(state.failed_by_gate)
    failures[int(event.gate)] = failures.get(int(event.gate), 0) + 1
    return replace(
        state, evaluated=state.evaluated + 1, failed_by_gate=tuple(sorted(failures.items()))
    )


def to_plain(state: GateState) -> dict[str, Any]:
    """JSON-able form."""
    return {
        "evaluated": state.evaluated,
        "passed": state.passed,
        "failed_by_gate": [list(p) for p in state.failed_by_gate],
    }


def from_plain(plain: dict[str, Any]) -> GateState:
    """Inverse of ``to_plain``."""
    return GateState(
        evaluated=int(plain["evaluated"]),
        passed=int(plain["passed"]),
        failed_by_gate=tuple((int(g), int(n)) for g, n in plain["failed_by_gate"]),
    )


def digest(state: GateState) -> bytes:
    """sha256 of the canonical encoding."""
    return digest_plain(to_plain(state))
