"""Probe forwards: side-effect-free eager forwards used for shape probes, isolation probes,
shadow losses, germination evidence and counterfactual evaluation.

A probe forward runs in eval mode (or, for train-mode probes, with every buffer restored afterwards)
with the RNG forked, the seeds' own RNG streams saved and every module's training flag restored, so
it changes neither host buffers (BatchNorm statistics) nor any random stream: a run with probes
stays bit-identical to one without.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.slot import SeedSlot, SlotTap
from actors.execution.stages import Mode

ProbeBatch = Tensor | tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def probe_mode(model: nn.Module, device: torch.device, *, train: bool = False) -> Iterator[None]:
    """Eval mode (``train``: train mode, buffers restored on exit) and a forked RNG for the
    duration; training flags and the seeds' RNG streams restored exactly."""
    flags = [(m, m.training) for m in model.modules()]
    streams = [(s, s.rng) for s in model.modules() if isinstance(s, SeedSlot)]
    buffers = _saved_buffers(model, [slot for slot, _ in streams]) if train else []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model.train(train)
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag
            for slot, rng in streams:
                slot.rng = rng
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _saved_buffers(model: nn.Module, slots: list[SeedSlot]) -> list[tuple[Tensor, Tensor]]:
    """A copy of each buffer of ``model`` but the slots' own (their RNG counters)."""
    counters = {id(b) for slot in slots for b in slot.buffers(recurse=False)}
    return [(b, b.clone()) for b in model.buffers() if id(b) not in counters]


def split_batch(batch: ProbeBatch) -> tuple[Tensor, Tensor | None]:
    """``(inputs, targets)`` of a probe batch (targets None when only inputs were given)."""
    if isinstance(batch, Tensor):
        return batch, None
    inputs, targets = batch
    return inputs, targets


def first_tensor(out: Any) -> Tensor:
    """The model output as one tensor (the first tensor of a tuple/list/dict output)."""
    if isinstance(out, Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, Tensor):
            return v
    raise TypeError("model output holds no tensor")


def probe_loss(out: Tensor, targets: Tensor | None, loss_fn: LossFn | None) -> Tensor | None:
    """The task loss of a probe output (cross-entropy by default when targets are given)."""
    if targets is None:
        return None
    return (loss_fn or F.cross_entropy)(out, targets)


def run_probe(
    model: nn.Module,
    inputs: Tensor,
    modes: Mapping[SeedSlot, tuple[Mode, float | None]],
    taps_for: list[SeedSlot],
    *,
    grad: bool,
) -> tuple[Tensor, dict[str, SlotTap]]:
    """One forward with some slots forced into a mode, recording what ``taps_for`` slots see.

    Call inside :func:`probe_mode`. Returns the output tensor and the first tap of each slot.
    """
    with ExitStack() as stack:
        for slot, (mode, alpha) in modes.items():
            stack.enter_context(slot.forced(mode, alpha))
        taps = {s.slot_id: stack.enter_context(s.tapped()) for s in taps_for}
        with torch.set_grad_enabled(grad):
            out = first_tensor(model(inputs))
    return out, {k: v[0] for k, v in taps.items() if v}
