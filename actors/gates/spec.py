"""The GateActor core as its hosts see it (the shell's logic and replay read this spec)."""

from __future__ import annotations

from actors.core import CoreSpec
from actors.gates.core import GateState, decide, digest, evolve, initial_state
from contracts import kinds

SPEC: CoreSpec[GateState] = CoreSpec(
    actor="gate",
    accepts=frozenset({kinds.GATE_REQUEST}),
    own_events=frozenset({kinds.GATE_RESULT}),
    initial=lambda _key: initial_state(),
    decide=decide,
    evolve=evolve,
    digest=digest,
)
