"""SeedActor: the lifecycle of one slot as a pure core (docs/design.md §2)."""

from actors.seed.core import decide
from actors.seed.lifecycle import (
    ACTIVE,
    ALLOWED,
    EXIT_GATE,
    GUARD,
    gate_name,
    is_allowed,
    stage_name,
)
from actors.seed.state import SeedState, digest, evolve, from_plain, initial_state, to_plain

__all__ = [
    "ACTIVE",
    "ALLOWED",
    "EXIT_GATE",
    "GUARD",
    "SeedState",
    "decide",
    "digest",
    "evolve",
    "from_plain",
    "gate_name",
    "initial_state",
    "is_allowed",
    "stage_name",
    "to_plain",
]
