"""Thread-safe inbox/outbox of the execution runtime (the barrier state digest lives in
:mod:`actors.execution.digest`)."""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable

from google.protobuf.message import Message

from actors.execution.digest import FINGERPRINT_SAMPLES, state_digest
from leyline import pb

__all__ = ["FINGERPRINT_SAMPLES", "Inbox", "Outbox", "state_digest"]

KIND_ACK = "exec.ack"
KIND_STEP_REPORT = "step.report"
KIND_TELEMETRY = "telemetry.raw"
KIND_SAFETY = "safety.signal"
KIND_BARRIER_VOTE = "barrier.vote"
KIND_PRUNING_IMPORTANCE = "pruning.importance"
KIND_PRUNING_ACK = "pruning.ack"


class Inbox:
    """Orders submitted from any thread; drained (never blocking) at step boundaries."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[pb.ExecutionOrder] = queue.SimpleQueue()

    def put(self, order: pb.ExecutionOrder) -> None:
        """Queue a copy of ``order`` (safe from any thread or event loop)."""
        copy = pb.ExecutionOrder()
        copy.CopyFrom(order)
        self._q.put_nowait(copy)

    def drain(self) -> list[pb.ExecutionOrder]:
        """Everything queued so far, in arrival order."""
        out: list[pb.ExecutionOrder] = []
        if self._q.empty():  # the usual case; one consumer, so nothing can be taken in between
            return out
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out


class Outbox:
    """Outgoing ``(kind, message)`` pairs; a bus bridge drains them off the training thread."""

    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self._items: deque[tuple[str, Message]] = deque()
        self.notify = notify

    def put(self, kind: str, message: Message) -> None:
        """Queue one message and wake the bridge, if it registered a callback."""
        self._items.append((kind, message))
        if self.notify is not None:
            self.notify()

    def drain(self) -> list[tuple[str, Message]]:
        """Take every queued message (oldest first)."""
        out: list[tuple[str, Message]] = []
        while True:
            try:
                out.append(self._items.popleft())
            except IndexError:
                return out

    def __len__(self) -> int:
        return len(self._items)
