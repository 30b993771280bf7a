"""The SafetyActor core as its hosts see it (the shell's logic and replay read this spec)."""

from __future__ import annotations

from actors.core import CoreSpec
from actors.safety.core import SafetyState, decide, digest, evolve, initial_state
from contracts import kinds

SPEC: CoreSpec[SafetyState] = CoreSpec(
    actor="safety",
    accepts=frozenset({kinds.SAFETY_SIGNAL, kinds.STEP_REPORT}),
    own_events=frozenset({kinds.SAFETY_VERDICT, kinds.CHECKPOINT_REQUEST}),
    initial=lambda _key: initial_state(),
    decide=decide,
    evolve=evolve,
    digest=digest,
)
