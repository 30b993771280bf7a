"""SafetyActor: per-slot circuit breakers, the run-wide emergency stop, reject storms."""

from actors.safety.core import Breaker, SafetyState, decide, digest, evolve, initial_state
from actors.safety.storm import RejectStorm, note_reject, unnote_reject

__all__ = [
    "Breaker",
    "RejectStorm",
    "SafetyState",
    "decide",
    "digest",
    "evolve",
    "initial_state",
    "note_reject",
    "unnote_reject",
]
