"""Runtime: what :class:`~actors.execution.actor.ExecutionActor` needs of the torch side.

:class:`~actors.execution.runtime.ExecutionRuntime` implements it; so does the torch-free
``scenarios.sim.SimRuntime``. Every method is called from the actor's event loop and must return
at once (the training thread picks the work up at its next step boundary).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from leyline import pb


class Runtime(Protocol):
    """One rank's runtime as the bus sees it."""

    @property
    def slots(self) -> Collection[str]:
        """The slot ids this runtime hosts (orders for any other slot are rejected)."""
        ...

    def submit(self, order: pb.ExecutionOrder) -> None:
        """Queue an order for its step (thread-safe, never blocks)."""
        ...

    def submit_pruning(self, order: pb.PruningOrder) -> None:
        """Queue a pruning order for its step (thread-safe, never blocks)."""
        ...

    def drain_outbox(self) -> list[tuple[str, Any]]:
        """Take every queued outgoing ``(kind, message)``, oldest first."""
        ...

    def connect(self, notify: Callable[[], None]) -> None:
        """Call ``notify`` (from any thread) whenever something is queued for the outbox."""
        ...

    def barrier_committed(self, barrier_step: int) -> None:
        """The BarrierActor committed ``barrier_step``: release the orders gated on it."""
        ...

    def request_checkpoint(self, reason: str, step: int = 0) -> None:
        """Write an emergency checkpoint at the next step boundary (never blocks)."""
        ...

    def request_rollback(self, reason: str, slots: Sequence[str] = (), step: int = 0) -> None:
        """Roll the host back from what the seeds of ``slots`` may have done (never blocks)."""
        ...
