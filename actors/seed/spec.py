"""The SeedActor core as its hosts see it (the shell's logic and replay read this spec)."""

from __future__ import annotations

from actors.core import CoreSpec
from actors.seed.core import decide
from actors.seed.fast import report_progress
from actors.seed.state import (
    SeedState,
    digest,
    evolve,
    initial_state,
    merge_reports,
    reissue_report,
    renumber,
)
from contracts import kinds

SPEC: CoreSpec[SeedState] = CoreSpec(
    actor="seed",
    accepts=frozenset(
        {
            kinds.SEED_COMMAND,
            kinds.STEP_REPORT,
            kinds.GATE_RESULT,
            kinds.EXEC_ACK,
            kinds.SAFETY_VERDICT,
        }
    ),
    own_events=kinds.LIFECYCLE_EVENTS,
    initial=initial_state,
    decide=decide,
    evolve=evolve,
    digest=digest,
    merge=merge_reports,
    fast=report_progress,
    reissue=reissue_report,
    renumber=renumber,
)
