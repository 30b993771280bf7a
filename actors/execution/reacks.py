"""The acks an ExecutionActor sent, by order id, to answer a copy of an order it already applied.

A SeedActor sends the order it awaits again, under the same id, when the trainer's step reports
pass its step without an ack (``actors/seed/builder.py``, ``resend_missed``): the order was lost,
or its ack was (refused as stale after an outage longer than the clock tolerance, the trainer's
outbox having held it sealed meanwhile). Execution applies an order id once; for a copy of one it
applied, it sends the same ack again, sealed afresh, so the slot's wait ends either way.
"""

from __future__ import annotations

from collections import OrderedDict

from leyline import pb

__all__ = ["SentAcks"]


class SentAcks:
    """The last ``limit`` acks sent (serialized), and the ones asked for again."""

    __slots__ = ("_acks", "_again", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._acks: OrderedDict[str, bytes] = OrderedDict()
        self._again: list[str] = []

    def sent(self, ack: pb.ExecutionAck) -> None:
        """Remember an ack as it goes out."""
        self._acks[ack.order_id] = ack.SerializeToString()
        self._acks.move_to_end(ack.order_id)
        if len(self._acks) > self._limit:
            self._acks.popitem(last=False)

    def again(self, order_id: str) -> bool:
        """A copy of order ``order_id`` arrived: send its ack again (False: none was sent yet, as
        the order is still due; its ack will come when it applies)."""
        if order_id not in self._acks:
            return False
        self._again.append(order_id)
        return True

    def take(self) -> list[pb.ExecutionAck]:
        """The acks to send again, once each."""
        ids, self._again = self._again, []
        return [pb.ExecutionAck.FromString(self._acks[i]) for i in dict.fromkeys(ids)]
