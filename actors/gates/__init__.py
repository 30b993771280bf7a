"""GateActor: gates G0-G5 as pure functions (docs/design.md §3) and the actor core around them."""

from actors.gates.checks import GATE_CHECKS, describe_failures, evaluate
from actors.gates.core import GateState, decide, digest, evolve, initial_state

__all__ = [
    "GATE_CHECKS",
    "GateState",
    "decide",
    "describe_failures",
    "digest",
    "evaluate",
    "evolve",
    "initial_state",
]
