"""Probe forwards: side-effect-free eager forwards used for shape probes, isolation probes,
shadow losses, germination evidence and counterfactual evaluation.

A probe forward runs in eval mode (or train mode for train-mode probes) and leaves the model as it
found it: every buffer is restored (BatchNorm statistics, QAT observers and FakeQuantize scales,
counters a forward updates in any mode), so are parameters a forward writes (an embedding with
``max_norm`` renormalises its rows in place; see :mod:`actors.execution.paramwrites`), torch's
RNG is forked, Python's ``random`` and NumPy's global RNG are restored, the seeds' own RNG streams saved and every training flag restored, so a
run with probes stays bit-identical to one without. What a probe cannot undo: side effects outside
the model's tensors (a user forward hook that logs or appends to a list, a Python attribute a
forward increments); probe forwards run them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution.paramwrites import kept_parameters
from actors.execution.slot import SeedSlot, SlotTap
from actors.execution.stages import Mode

ProbeBatch = Tensor | tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
_Batch = TypeVar("_Batch")


@contextmanager
def probe_mode(model: nn.Module, device: torch.device, *, train: bool = False) -> Iterator[None]:
    """Eval mode (``train``: train mode) for the duration; on exit the model is left exactly as
    it was: every buffer (values and tensor objects; the slots' own flags aside), every parameter
    a forward writes, every training flag, torch's RNG (forked), Python's ``random`` and NumPy's
    global RNG, the seeds' streams."""
    flags = [(m, m.training) for m in model.modules()]
    streams = [(s, s.rng) for s in model.modules() if isinstance(s, SeedSlot)]
    buffers = _saved_buffers(model)
    params = kept_parameters(model)
    with torch.random.fork_rng(devices=_cuda_devices(model, device)), _kept_host_rng():
        model.train(train)
        try:
            yield
        finally:
            for m, flag in flags:
                m.training = flag
            for slot, rng in streams:
                slot.rng = rng
            _restore_buffers(buffers)
            params.restore()


@contextmanager
def _kept_host_rng() -> Iterator[None]:
    """Python's ``random`` state, and NumPy's global one when NumPy is loaded, restored on exit."""
    state = random.getstate()
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    try:
        yield
    finally:
        random.setstate(state)
        if np is not None:
            np.random.set_state(np_state)


def _cuda_devices(model: nn.Module, device: torch.device) -> list[torch.device]:
    """Every CUDA device the model's tensors (or the runtime) live on: their RNGs are forked."""
    found = {t.device for t in (*model.parameters(), *model.buffers()) if t.is_cuda}
    if device.type == "cuda":
        found.add(device)
    return sorted(found, key=str)


# (module, its buffer dict as it was, [(buffer, copy)]) per module
_Saved = list[tuple[nn.Module, dict[str, Tensor | None], list[tuple[Tensor, Tensor]]]]


def _saved_buffers(model: nn.Module) -> _Saved:
    """Each module's buffers (a copy of their values) but a slot's own flags (alpha, counters)."""
    saved: _Saved = []
    for m in model.modules():
        own = isinstance(m, SeedSlot)
        copies = [
            (b, b.detach().clone())
            for b in m._buffers.values()
            if b is not None and not own and not b.is_inference()  # (read-only here)
        ]
        saved.append((m, dict(m._buffers), copies))
    return saved


def _restore_buffers(saved: _Saved) -> None:
    """Put back every buffer object and its value (its shape too)."""
    with torch.no_grad():
        for m, entries, copies in saved:
            now = m._buffers
            if now.keys() != entries.keys() or any(now[k] is not v for k, v in entries.items()):
                now.clear()
                now.update(entries)
            for b, value in copies:  # always: batch_norm's kernel writes without a version bump
                if b.shape != value.shape:
                    b.resize_(value.shape)
                b.copy_(value)


def check_batch(batch: _Batch, what: str) -> _Batch:
    """``batch`` itself when it is None, a tensor or ``(inputs, targets)`` with tensor inputs;
    else a TypeError: probes and shadow steps call ``model(inputs)`` with one tensor."""
    if batch is None or isinstance(batch, Tensor):
        return batch
    parts: tuple[Any, ...] = tuple(batch) if isinstance(batch, tuple | list) else (batch,)
    if len(parts) == 2 and isinstance(parts[0], Tensor) and isinstance(parts[1], Tensor | None):
        return batch
    got = type(parts[0] if len(parts) == 2 else batch).__name__
    raise TypeError(
        f"{what}: inputs are a {got}, not a tensor. Kasmina runs the model as model(inputs) on "
        f"one tensor, so {what} must be inputs or (inputs, targets) with tensor inputs; a model "
        "taking a tuple or dict of inputs is not supported (pack its inputs into one tensor)"
    )


def split_batch(batch: ProbeBatch) -> tuple[Tensor, Tensor | None]:
    """``(inputs, targets)`` of a probe batch (targets None when only inputs were given)."""
    if isinstance(batch, Tensor):
        return batch, None
    inputs, targets = batch
    return inputs, targets


def first_tensor(out: Any) -> Tensor:
    """The model output as one tensor: itself, or a mapping's ``logits`` entry (a Hugging Face
    style output, whose first entry may be its loss), else the first tensor of a tuple, list or
    mapping output."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]  # type: ignore[no-any-return]
    values = out.values() if isinstance(out, Mapping) else out
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
