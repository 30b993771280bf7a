"""Agreement across data-parallel ranks: what every rank holds at a step boundary.

An order (or a rollback) takes effect at step ``S`` only if every rank holds it at ``S``; the ranks
that hold it alone refuse it, so it is applied at the same step on every rank or on none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def agree(ids: Sequence[str], device: torch.device) -> set[str]:
    """The ids of ``ids`` that every rank holds. A collective: every rank calls it once per step
    (one small all-reduce; the ids themselves travel only when some rank holds one)."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([len(ids)], device=on)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if int(count.item()) == 0:
        return set()
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(ids))
    common = set(ids)
    for other in gathered:
        common &= set(other or ())
    return common
