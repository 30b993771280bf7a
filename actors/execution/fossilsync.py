"""A fossil's gradient under DistributedDataParallel: averaged across ranks in the backward of
a forward that DDP runs, as DDP averages the host's own, and in no other backward.

A fossil is part of the host, but DDP was built before it existed and does not reduce its
parameters. Its gradient is averaged as it flows back into each parameter (an identity on the
parameter whose backward all-reduces), and only for forwards of DDP's: inside ``DDP.forward``,
or the recompute (inside the backward) of a reentrant activation checkpoint whose first pass ran
there. A backward through the unwrapped model on one rank alone (rank 0's diagnostics, a
saliency map) joins no collective, where a hook on the parameters used to all-reduce in every
backward and blocked that rank in a collective the others never joined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from actors.execution.slot import SeedSlot

__all__ = ["fossil_forward", "in_ddp_forward"]


def in_ddp_forward() -> bool:
    """Whether a ``DistributedDataParallel`` forward is running (it marks itself active)."""
    return getattr(DistributedDataParallel, "_active_ddp_module", None) is not None


class _Averaged(torch.autograd.Function):
    """The parameter itself; its gradient averaged across ``world`` ranks on the way back."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, world: int) -> Tensor:
        ctx.world = world
        return p.view_as(p)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad / ctx.world, None


def _averaged(p: Tensor, world: int) -> Tensor:
    out: Tensor = _Averaged.apply(p, world)  # type: ignore[no-untyped-call]
    return out


def fossil_forward(slot: SeedSlot, seed: nn.Module, src: Tensor) -> Tensor:
    """``seed(src)`` for the fossil at ``slot``; in a run of several ranks (``slot.world``),
    with every trainable parameter's gradient averaged across them in the backward of a DDP
    forward: one inside ``DDP.forward`` with gradients on, or the recompute of a reentrant
    activation checkpoint whose first pass ran there (without gradients, in train mode), which
    runs inside the backward after ``DDP.forward`` returned."""
    world = slot.world
    if world <= 1:
        return _plain(seed, src)
    grad = torch.is_grad_enabled()
    if in_ddp_forward():
        if grad:
            return _averaged_call(seed, src, world)
        if slot.training:  # a reentrant checkpoint's first pass: recomputed in DDP's backward
            slot.recomputes += 1
        return _plain(seed, src)
    if grad and slot.recomputes > 0 and _in_backward():
        slot.recomputes -= 1
        return _averaged_call(seed, src, world)
    return _plain(seed, src)


def _in_backward() -> bool:
    """Whether this runs inside a backward pass (a checkpoint's recompute)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and int(task()) != -1


def _plain(seed: nn.Module, src: Tensor) -> Tensor:
    out: Tensor = seed(src)
    return out


def _averaged_call(seed: nn.Module, src: Tensor, world: int) -> Tensor:
    params = {n: _averaged(p, world) for n, p in seed.named_parameters() if p.requires_grad}
    averaged: Tensor = torch.func.functional_call(seed, params, (src,), strict=False)
    return averaged
