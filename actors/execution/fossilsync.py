"""A fossil's gradient under DistributedDataParallel: averaged across ranks in the backward of
a forward that DDP runs, as DDP averages the host's own, and in no other backward.

A fossil is part of the host, but DDP was built before it existed and does not reduce its
parameters. Its gradient is averaged as it flows back into each parameter (an identity on the
parameter whose backward all-reduces), and only for forwards inside ``DDP.forward``: a backward
through the unwrapped model on one rank alone (rank 0's diagnostics, a saliency map) joins no
collective, where a hook on the parameters used to all-reduce in every backward and blocked
that rank in a collective the others never joined.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

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


def fossil_forward(seed: nn.Module, src: Tensor, world: int) -> Tensor:
    """``seed(src)``; inside a DDP forward of a run of ``world`` > 1 ranks, with every trainable
    parameter's gradient averaged across the ranks in the backward."""
    if world <= 1 or not in_ddp_forward() or not torch.is_grad_enabled():
        out: Tensor = seed(src)
        return out
    params = {n: _averaged(p, world) for n, p in seed.named_parameters() if p.requires_grad}
    averaged: Tensor = torch.func.functional_call(seed, params, (src,), strict=False)
    return averaged
