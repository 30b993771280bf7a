"""BarrierActor: epoch-aligned barriers across ranks (commit, Byzantine report, timeout)."""

from actors.barrier.core import BarrierState, decide, digest, evolve, initial_state

__all__ = ["BarrierState", "decide", "digest", "evolve", "initial_state"]
