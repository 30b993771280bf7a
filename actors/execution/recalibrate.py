"""BatchNorm statistics for a fair counterfactual: each arm of the paired validation (seed on,
seed off) is judged with running statistics estimated under that arm's own forward.

The statistics the host runs with were learned with the seed in the forward; with the seed
switched off they mis-normalise the host, and the seed-off arm is then not the host. So before
each arm is evaluated, every BatchNorm whose statistics training moves (in train mode, or its
batch count moved since the first gate evaluation, however the model's mode flag stands at the
moment; momentum not 0: a frozen one is judged with the statistics it runs with) is reset and re-estimated on the
validation inputs (BatchNorm in train mode with ``momentum=None``, a cumulative average; every
other module in eval; no grad; RNG forked), and afterwards every BatchNorm buffer, momentum and
training flag is restored exactly: the host is bit-identical to before. A model without such
BatchNorm pays nothing.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["kept_norms", "recalibrate", "tracked_norms"]


_FIRST_SEEN: weakref.WeakKeyDictionary[_BatchNorm, int] = weakref.WeakKeyDictionary()
"""Each BatchNorm's ``num_batches_tracked`` when a gate evaluation first looked at it."""


def _trained(m: _BatchNorm) -> bool:
    """Whether training moves ``m``'s statistics: it is in train mode now, or its
    ``num_batches_tracked`` moved since a gate evaluation first looked at it (a train-mode
    forward of the user's: every probe restores the buffers). The mode of the moment alone would
    take a model left in eval mode between steps (by the loop's own evaluation) for frozen."""
    tracked = m.num_batches_tracked
    if tracked is None:
        return m.training
    count = int(tracked)
    first = _FIRST_SEEN.setdefault(m, count)
    return m.training or count != first


def tracked_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm modules of ``model`` whose running statistics training moves: they keep
    statistics, are trained (:func:`_trained`) and have a momentum that is not 0 (a BatchNorm
    the user froze, kept in eval mode while training or with momentum 0, runs with its stored
    statistics, so it is judged with them); none when a SyncBatchNorm would need every rank in
    step (a distributed run)."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
        and m.momentum != 0
        and _trained(m)
    ]
    synced = any(isinstance(m, nn.SyncBatchNorm) for m in norms)
    if synced and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return []
    return norms


@contextmanager
def kept_norms(norms: list[_BatchNorm]) -> Iterator[None]:
    """Every buffer, momentum and training flag of ``norms`` restored exactly on exit."""
    saved = [
        (m, m.momentum, m.training, [(b, b.clone()) for b in m.buffers(recurse=False)])
        for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, momentum, training, buffers in saved:
                m.momentum, m.training = momentum, training
                for b, copy in buffers:
                    b.copy_(copy)


def recalibrate(
    model: nn.Module, norms: list[_BatchNorm], inputs: Tensor, chunk: int, device: torch.device
) -> None:
    """Re-estimate the running statistics of ``norms`` on ``inputs`` with the model's forward as
    it is now (slots forced by the caller), then leave ``norms`` in eval mode; call inside
    :func:`kept_norms`. Nothing happens with fewer than two inputs (no batch statistic)."""
    n = int(inputs.shape[0])
    if not norms or n < 2:
        return
    flags = [(module, module.training) for module in model.modules()]
    parts = max(1, min(math.ceil(n / chunk), n // 2))  # every part holds two or more examples
    devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for x in torch.tensor_split(inputs, parts):
                model(x.to(device))
    finally:
        for module, flag in flags:
            module.training = flag
        for m in norms:
            m.eval()
