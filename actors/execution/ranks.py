"""Agreement across data-parallel ranks: what every rank holds at a step boundary.

The ranks also agree on the newest barrier commit all of them have received, so an order gated on
a barrier is released at the same step on every rank, and each rank's barrier vote carries a digest
of a sample of its seed gradients for the BarrierActor to compare (:func:`grad_digest`).

An order (or a rollback) takes effect at step ``S`` only if every rank holds it at ``S``; the ranks
that hold it alone refuse it, so it is applied at the same step on every rank or on none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from actors.execution.mailbox import FINGERPRINT_SAMPLES
from actors.execution.slot import SeedSlot


def agree(ids: Sequence[str], device: torch.device, commit: int = -1) -> tuple[set[str], int]:
    """The ids of ``ids`` that every rank holds, and the newest barrier commit every rank has
    received (the lowest of the ranks' ``commit``). A collective: every rank calls it once per
    step (one small all-reduce; the ids themselves travel only when some rank holds one)."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    both = torch.tensor([len(ids), -commit], device=on, dtype=torch.int64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    count, lowest = int(both[0].item()), -int(both[1].item())
    if count == 0:
        return set(), lowest
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(ids))
    common = set(ids)
    for other in gathered:
        common &= set(other or ())
    return common, lowest


def left_anywhere(
    slot_ids: Sequence[str], left: set[str], rank: int, device: torch.device
) -> dict[str, int]:
    """The slots of ``slot_ids`` whose seed left some rank outside an agreed order (``left``:
    those it left here), each with the highest such rank. A collective: every rank calls it at
    the start of each step (one small all-reduce over the slots, in the same order everywhere)."""
    if not slot_ids:
        return {}
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    flags = torch.tensor([rank + 1 if s in left else 0 for s in slot_ids], device=on)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return {s: int(f) - 1 for s, f in zip(slot_ids, flags.tolist(), strict=True) if f}


def grad_digest(slots: Mapping[str, SeedSlot], step: int) -> bytes:
    """sha256 over a sample of every seed parameter's gradient: ``FINGERPRINT_SAMPLES`` strided
    elements per tensor, the offset moving with ``step`` so successive barriers read other
    elements. Ranks whose seed gradients were averaged hold the same bytes; b"" when no seed has
    a gradient (nothing to compare)."""
    h = hashlib.sha256()
    sampled = False
    for slot_id in sorted(slots):
        for name, p in slots[slot_id].named_parameters():
            if p.grad is None:
                continue
            flat = p.grad.detach().reshape(-1)
            stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
            h.update(f"{slot_id}/{name}".encode())
            sample = flat[step % stride :: stride].contiguous().view(torch.uint8)
            h.update(sample.cpu().numpy().tobytes())
            sampled = True
    return h.digest() if sampled else b""
