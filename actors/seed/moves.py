"""Moves several of the seed core's handlers make: the cull (with its embargo and drop order) and
the fields of a pause or a resume."""

from __future__ import annotations

from typing import Any

from actors.seed.builder import Builder
from actors.seed.lifecycle import IN_FORWARD
from leyline import pb

__all__ = ["cull", "pause_fields"]


def cull(
    b: Builder,
    cause: str,
    *,
    gate: pb.SeedLifecycleGate.ValueType | None = None,
    urgent: bool = False,
) -> None:
    """X -> CULLED -> EMBARGOED, and order execution to drop the seed. Dropping a seed in the
    forward waits for a barrier commit, unless the cull is ``urgent`` (a safety verdict or an
    emergency stop must not wait on the ranks)."""
    gated = b.state.stage in IN_FORWARD and not urgent
    b.transition(pb.SEED_STAGE_CULLED, cause, gate=gate)
    b.transition(pb.SEED_STAGE_EMBARGOED, "embargo after cull")
    b.await_order(pb.SEED_STAGE_CULLED, gated=gated)


def pause_fields(b: Builder, pause: bool) -> dict[str, Any]:
    """The fields that pause the slot, or resume it with its stage clock shifted by the pause."""
    if pause:
        return {"paused": True, "paused_at": b.now}
    shifted = b.state.stage_entered_step + max(0, b.now - b.state.paused_at)
    return {"paused": False, "stage_entered_step": shifted}
