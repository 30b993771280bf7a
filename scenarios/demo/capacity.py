"""Where would a seed help most? A GradMax-style capacity signal per germination plan.

A seed's output side starts at zero, so at birth the loss changes first through the gradient of
its output weights ``W_out``: with the seed fully on, ``dL/dW_out = sum_i g_i a_i^T``, where
``g_i`` is the loss gradient at the slot's output for example ``i`` and ``a_i`` the seed's hidden
activations (its first layer, freshly initialised, applied to what the seed reads). The Frobenius
norm of that matrix is the rate at which a step on the new weights can lower the training loss:
the larger it is, the more capacity the host lacks there (Evci et al., GradMax, ICLR 2022, pick
the fan-out of new units by the same gradient). The score is measured on a training batch with a
side-effect-free probe forward; nothing is attached to the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import SeedSlot, SlotShape, get_blueprint
from actors.execution.probing import first_tensor, probe_mode


def _output_layer(seed: nn.Module) -> nn.Module:
    """The seed's output side: its last module with parameters and no children."""
    leaves = [
        m for m in seed.modules() if not list(m.children()) and list(m.parameters(recurse=False))
    ]
    if not leaves:
        raise ValueError("seed has no parameterised layer")
    return leaves[-1]


def _output_inputs(module: nn.Module, src: Tensor) -> Tensor | None:
    """What the seed's output layer reads when the seed runs on ``src`` (rows: examples)."""
    seen: list[Tensor] = []
    handle = _output_layer(module).register_forward_hook(
        lambda _m, inp, _out: seen.append(inp[0].detach())
    )
    try:
        with torch.no_grad():
            module(src.detach())
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1]) if seen else None


def capacity_scores(
    model: nn.Module,
    slots: Mapping[str, SeedSlot],
    plans: Sequence[Any],
    batch: tuple[Tensor, Tensor],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """``slot -> ||dL/dW_out||`` of each plan's seed at birth (plans need ``slot``, ``blueprint``
    and ``params``), on one training batch."""
    x, y = batch
    device = next(model.parameters()).device
    wanted = [slots[p.slot] for p in plans]
    with probe_mode(model, device), ExitStack() as stack:
        taps = {s.slot_id: stack.enter_context(s.tapped()) for s in wanted}
        loss = F.cross_entropy(first_tensor(model(x.to(device))), y.to(device))
        outs = [taps[s.slot_id][0].out for s in wanted]
        grads = torch.autograd.grad(loss, outs, allow_unused=True)
    scores: dict[str, float] = {}
    for plan, slot, g in zip(plans, wanted, grads, strict=True):
        tap = taps[slot.slot_id][0]
        bp = get_blueprint(plan.blueprint)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = bp.build(SlotShape.of(tap.h, tap.x), plan.params, slot).to(tap.h.device)
        src = tap.x if bp.reads_input else tap.h
        a = _output_inputs(module, src) if src is not None else None
        if g is None or a is None:
            scores[plan.slot] = 0.0
            continue
        gm = g.detach().reshape(-1, g.shape[-1])
        scores[plan.slot] = float((gm.T @ a).norm())
    return scores
