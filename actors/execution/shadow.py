"""The shadow-loss path: seeds learn from the step's batch with the seed fully on, host untouched.

``on_step(step, loss, batch=(x, y))`` sets the gradient of a seed to that of its shadow loss (the
task loss at alpha 1, input detached, differentiated with respect to the seed's parameters only;
the knowledge-distillation objective when the runtime has a teacher). Which seeds it serves:

- TRAINING: every seed; the shadow gradient replaces the straight-through one;
- BLENDING, by blend phase (alpha hysteresis, :func:`actors.execution.stages.blend_phase`):
  ``early`` (alpha below the 0.3 band) replaces the blended gradient as in TRAINING, ``mid``
  (between the bands) adds to it, ``late`` (above the 0.7 band) leaves the blended gradient
  alone: the seed's learning is handed over from its own objective to the blended one.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import torch

from actors.execution import stages as st
from actors.execution.distill import kd_settings
from actors.execution.evidence import shadow_step
from actors.execution.memory import seed_raised
from actors.execution.pairs import per_example_loss
from actors.execution.probing import ProbeBatch, first_tensor, probe_mode, split_batch
from actors.execution.seedpass import average_grads
from actors.execution.slot import SeedSlot

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime
    from actors.execution.slotstate import SlotState

REPLACE, ADD = "replace", "add"
log = logging.getLogger("kasmina.execution")
_WARNED: weakref.WeakSet[ExecutionRuntime] = weakref.WeakSet()  # told once about a bad batch


def shadow_use(state: SlotState) -> str | None:
    """How the slot's seed takes a shadow gradient this step: ``replace``, ``add`` or None."""
    slot = state.slot
    if slot.seed is None or slot.fossil or state.paused:
        return None
    if slot.stage == st.TRAINING:
        return REPLACE
    if slot.stage == st.BLENDING:
        return {st.EARLY: REPLACE, st.MID: ADD}.get(state.phase)
    return None


def serve(rt: ExecutionRuntime, batch: ProbeBatch) -> int:
    """Give every seed :func:`shadow_use` selects its shadow gradient; returns how many."""
    inputs, targets = split_batch(batch)
    if targets is None:
        return 0
    served = 0
    soft: torch.Tensor | None = None
    for state in rt.states.values():
        use = shadow_use(state)
        if use is None:
            continue
        kd = kd_settings(rt, state)
        if kd is not None and soft is None:
            soft = rt.soft_targets(inputs)
        distill = None if kd is None or soft is None else (soft, *kd)
        if _serve_one(rt, state, use, inputs, targets, distill):
            served += 1
    return served


def _serve_one(
    rt: ExecutionRuntime,
    state: SlotState,
    use: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    distill: tuple[torch.Tensor, float, float] | None,
) -> bool:
    """One seed's shadow step and gradient (``use``: replace or add); False when the seed has
    nothing to train or the step raised (recorded, the seed taken out)."""
    slot = state.slot
    params = [p for p in slot.seed_parameters() if p.requires_grad]
    if not params:  # frozen since it was attached: nothing to learn (G1's gradient check says so)
        return False
    try:
        grads, gain = shadow_step(rt.model, slot, rt.device, inputs, targets, rt.loss_fn, distill)
    except Exception as exc:  # the seed leaves; the training loop goes on
        if _host_refuses(rt, slot, inputs, targets):  # the trainer's batch, not the seed
            if rt not in _WARNED:
                _WARNED.add(rt)
                log.warning("on_step(batch=…): the host alone cannot take this batch (%s: %s); "
                            "no shadow step for it", type(exc).__name__, exc)  # fmt: skip
            return False
        seed_raised(rt, state, "the shadow-loss step", exc)
        return False
    if slot.stage == st.TRAINING:
        state.shadow_gains.append(gain)
    _set_grads(rt, params, grads, add=use == ADD)
    return True


def _host_refuses(
    rt: ExecutionRuntime, slot: SeedSlot, inputs: torch.Tensor, targets: torch.Tensor
) -> bool:
    """Whether the host alone (the seed out of the forward) raises on the batch or its loss: then
    a failed shadow step is the batch's fault, and no seed is blamed for it."""
    try:
        with probe_mode(rt.model, rt.device), slot.forced(st.Mode.IDENTITY, 0.0), torch.no_grad():
            out = first_tensor(rt.model(inputs.to(rt.device)))
            per_example_loss(out, targets.to(rt.device), rt.loss_fn)
    except Exception:  # any failure of the host alone is the batch's
        return True
    return False


def _set_grads(
    rt: ExecutionRuntime,
    params: list[torch.nn.Parameter],
    grads: list[torch.Tensor | None],
    *,
    add: bool,
) -> None:
    """Give ``params`` the shadow gradients ``grads`` (averaged across ranks), in place of the
    blended ones or (``add``) on top of them."""
    blended = [p.grad for p in params] if add else [None] * len(params)
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach()
    if rt.distributed:
        average_grads(params, rt.world_size)
    for p, b in zip(params, blended, strict=True):
        if b is not None:
            p.grad = b if p.grad is None else p.grad + b
