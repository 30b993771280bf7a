"""The BarrierActor core as its hosts see it (the shell's logic and replay read this spec)."""

from __future__ import annotations

from actors.barrier.core import BarrierState, decide, digest, evolve, initial_state, timer
from actors.core import CoreSpec
from contracts import kinds

SPEC: CoreSpec[BarrierState] = CoreSpec(
    actor="barrier",
    accepts=frozenset({kinds.BARRIER_VOTE, kinds.BARRIER_TICK}),
    own_events=frozenset(
        {
            kinds.BARRIER_PROPOSE,
            kinds.BARRIER_VOTE,
            kinds.BARRIER_COMMIT,
            kinds.BARRIER_BYZANTINE,
            kinds.BARRIER_TIMEOUT,
        }
    ),
    initial=lambda _key: initial_state(),
    decide=decide,
    evolve=evolve,
    digest=digest,
    timer=timer,
)
