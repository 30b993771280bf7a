"""Step confirmations: what the trainer learns about every order its runtime applied or refused.

Every order due at a step boundary is answered with exactly one :class:`pb.ExecutionAck`. The same
answer is handed to the training loop as a :class:`StepConfirmation` (``runtime.confirmations()``,
or the ``on_confirm`` callback, called on the training thread inside ``on_step``) and, through the
ExecutionActor, appended to the run's ``confirmations`` stream, where a controller reads it
(``KasminaClient.confirmations``, ``kasmina status``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from actors.execution.stages import stage_name
from leyline import pb

__all__ = ["Confirmations", "OnConfirm", "StepConfirmation"]

KEPT = 10_000  # unread step confirmations kept (the oldest are dropped beyond)


@dataclass(frozen=True, slots=True)
class StepConfirmation:
    """One order as this rank's runtime answered it."""

    order_id: str
    slot: str
    stage: str  # the slot's stage after the order (e.g. "BLENDING")
    step: int  # the step boundary it was applied (or refused) at; its effect starts at step + 1
    ok: bool
    error: str  # why it was refused, or a note (late); "" otherwise
    rank: int
    barrier: int | None  # a barrier-gated order: the barrier commit that released it

    @classmethod
    def from_ack(cls, ack: pb.ExecutionAck) -> StepConfirmation:
        """The confirmation an acknowledgement stands for."""
        return cls(
            order_id=ack.order_id,
            slot=ack.slot,
            stage=stage_name(int(ack.stage)),
            step=int(ack.applied_at_step),
            ok=bool(ack.ok),
            error=ack.error,
            rank=int(ack.rank),
            barrier=int(ack.committed_barrier) if ack.barrier_gated else None,
        )


OnConfirm = Callable[[StepConfirmation], None]


class Confirmations:
    """The unread step confirmations of one runtime, and the trainer's callback."""

    def __init__(self, on_confirm: OnConfirm | None = None) -> None:
        self.on_confirm = on_confirm
        self._unread: deque[StepConfirmation] = deque(maxlen=KEPT)

    def add(self, ack: pb.ExecutionAck) -> None:
        """Record the confirmation ``ack`` stands for and call the callback with it."""
        confirmation = StepConfirmation.from_ack(ack)
        self._unread.append(confirmation)
        if self.on_confirm is not None:
            self.on_confirm(confirmation)

    def take(self) -> list[StepConfirmation]:
        """Every unread confirmation, oldest first."""
        out = list(self._unread)
        self._unread.clear()
        return out
