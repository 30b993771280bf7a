"""Thread-safe inbox/outbox of the execution runtime and the barrier state digest."""

from __future__ import annotations

import hashlib
import queue
import struct
from collections import deque
from collections.abc import Callable, Mapping

import torch
from google.protobuf.message import Message
from torch import nn

from actors.execution.slot import SeedSlot
from leyline import pb

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


FINGERPRINT_SAMPLES = 64  # host elements sampled per parameter tensor for the barrier digest


def state_digest(model: nn.Module, slots: Mapping[str, SeedSlot]) -> bytes:
    """sha256 over every seed parameter, a fingerprint of the host's parameters and every slot's
    stage and alpha. Cost: O(seed parameters) + O(host tensors): the host fingerprint reads
    ``FINGERPRINT_SAMPLES`` evenly strided elements of each host tensor (replicas that diverge do
    so everywhere, so sampled elements differ too), not every byte."""
    h = hashlib.sha256()
    in_slots = {id(p) for slot in slots.values() for p in slot.parameters()}
    samples: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if id(p) in in_slots:
            continue
        h.update(name.encode())
        flat = p.detach().reshape(-1)
        samples.append(flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)].float())
    if samples:
        h.update(_bytes(torch.cat(samples)))
    for slot_id in sorted(slots):
        slot = slots[slot_id]
        h.update(slot_id.encode())
        h.update(struct.pack("<id", slot.stage, float(slot.alpha)))
        for name, p in slot.named_parameters():
            h.update(name.encode())
            h.update(_bytes(p.detach()))
    return h.digest()


def _bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
