"""BarrierActor: three-phase consensus across ranks (propose, vote, commit; Byzantine report,
timeout)."""

from actors.barrier.core import BarrierState, decide, digest, evolve, initial_state, timer

__all__ = ["BarrierState", "decide", "digest", "evolve", "initial_state", "timer"]
