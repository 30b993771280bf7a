"""Measurements taken with probe forwards: isolation probes with shadow losses, the seed's own
contribution (paired shadow-loss differences, seed on vs alpha = 0 on the same examples),
counterfactual evaluation (alpha=1 vs alpha=0, with a paired per-example gain on validation) and
the G5 reset check."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from actors.execution.distill import distill_objective
from actors.execution.isolation import IsolationReport, autograd_probe
from actors.execution.pairs import (
    BATCH_PAIRS,
    Arm,
    Paired,
    arm,
    paired_losses,
    paired_metrics,
    per_example_loss,
    pooled_tail,
)
from actors.execution.probing import (
    LossFn,
    ProbeBatch,
    first_tensor,
    probe_loss,
    probe_mode,
    run_probe,
    split_batch,
)
from actors.execution.recalibrate import kept_norms, recalibrate, tracked_norms
from actors.execution.slot import SeedSlot, host_parameters
from actors.execution.stages import EMBARGOED, TERMINATED, TRAINING, Mode
from contracts import evidence as ev
from leyline import pb

__all__ = [
    "BATCH_PAIRS",
    "LATENCY_REPS",
    "Paired",
    "counterfactual",
    "isolation_probe",
    "latency_overhead",
    "on_mode",
    "paired_losses",
    "paired_validation",
    "per_example_loss",
    "pooled_tail",
    "reset_check",
    "shadow_step",
    "slot_facts",
]

if TYPE_CHECKING:
    from actors.execution.slotstate import SlotState


def shadow_step(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn | None,
    distill: tuple[Tensor, float, float] | None = None,
) -> tuple[list[Tensor | None], Paired]:
    """The shadow-loss gradient of one seed and its paired gain on the same batch.

    The shadow loss is the task loss with the seed fully on (alpha 1, input detached); the
    gradient is taken with respect to the seed's parameters only. With ``distill`` (the teacher's
    logits on ``inputs``, temperature, weight) it is the knowledge-distillation objective
    ``(1-w) task + w T^2 KL``. Before the seed steps, the same batch is run at alpha 0, and
    ``task loss(alpha 0) - task loss(seed on)`` per example is the seed's own contribution, free
    of host learning (both forwards see the same host weights)."""
    params = [p for p in slot.seed_parameters() if p.requires_grad]
    inputs, targets = inputs.to(device), targets.to(device)
    with probe_mode(model, device):
        with slot.forced(on_mode(slot), 1.0):
            out = first_tensor(model(inputs))
            objective = per_example_loss(out, targets, loss_fn).mean()
            if distill is not None:
                soft, temperature, weight = distill
                objective = distill_objective(objective, out, soft, temperature, weight)
            grads: list[Tensor | None] = list(
                torch.autograd.grad(objective, params, allow_unused=True)
            )
            on = paired_losses(out.detach(), targets, loss_fn)
        with slot.forced(Mode.IDENTITY, 0.0), torch.no_grad():
            off = paired_losses(first_tensor(model(inputs)), targets, loss_fn)
    return grads, Paired.of(off - on)


def slot_facts(slot: SeedSlot) -> dict[str, float]:
    """G0's slot evidence, read from the slot itself: free (no seed, not a fossil, not embargoed,
    not terminated) and embargoed."""
    blocked = slot.stage in (EMBARGOED, TERMINATED) or slot.fossil  # a merged fossil: no seed
    return {
        ev.SLOT_FREE: float(slot.seed is None and not blocked),
        ev.SLOT_EMBARGOED: float(slot.stage == EMBARGOED),
    }


def on_mode(slot: SeedSlot) -> Mode:
    """The mode that puts the slot's seed fully in the forward (alpha 1, input still detached)."""
    if slot.fossil:
        return Mode.FOSSIL
    return Mode.CONVEX if slot.blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL


def isolation_probe(
    model: nn.Module,
    slots: Mapping[str, SeedSlot],
    active: list[SlotState],
    device: torch.device,
    batch: ProbeBatch,
    loss_fn: LossFn | None,
) -> dict[str, IsolationReport]:
    """One probe forward with every active seed at alpha 1: autograd isolation check per seed,
    ``||s|| / ||h||`` per seed, shadow loss (seeds on) and host loss (seeds off)."""
    inputs, targets = split_batch(batch)
    host = host_parameters(model, slots)
    modes = {s.slot: (on_mode(s.slot), 1.0) for s in active}
    reports: dict[str, IsolationReport] = {}
    with probe_mode(model, device):
        out, taps = run_probe(model, inputs, modes, [s.slot for s in active], grad=True)
        for state in active:
            tap = taps.get(state.slot.slot_id)
            if tap is None or tap.z is None:
                continue
            reports[state.slot.slot_id] = autograd_probe(tap.z, host)
            hn = float(tap.h.detach().float().norm())
            zn = float(tap.z.detach().float().norm())
            state.norm_ratio = zn / hn if hn > 0 else math.inf
            state.norm_ratio_n = int(tap.h.shape[0]) if tap.h.dim() else 1
        shadow = probe_loss(out.detach(), targets, loss_fn)
        if shadow is not None and targets is not None:
            _record_losses(model, inputs, targets, out.detach(), float(shadow), active, loss_fn)
    return reports


def _record_losses(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    out: Tensor,
    shadow: float,
    active: list[SlotState],
    loss_fn: LossFn | None,
) -> None:
    """Each active seed's shadow loss (``out``: the forward with the seeds on), the host loss
    (a forward with them off) and, for a TRAINING seed, the paired per-example gain."""
    off = {s.slot: (Mode.IDENTITY, None) for s in active}
    base, _ = run_probe(model, inputs, off, [], grad=False)
    host_loss = probe_loss(base, targets, loss_fn)
    gain = Paired.of(paired_losses(base, targets, loss_fn) - paired_losses(out, targets, loss_fn))
    for state in active:
        if math.isnan(state.seed_loss_first):
            state.seed_loss_first = shadow
        state.seed_loss_last = shadow
        state.host_probe_loss = float(host_loss) if host_loss is not None else math.nan
        if state.slot.stage == TRAINING:
            state.probe_gain = gain


def paired_validation(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    validation: ProbeBatch,
    loss_fn: LossFn | None,
    chunk: int = 4096,
) -> dict[str, float]:
    """Validation metrics at alpha 1 and alpha 0 on the same examples, with the paired gain.

    The gain per example is ``correct(alpha 1) - correct(alpha 0)`` for class-index targets
    (with the counts of fixes and breaks), else ``loss(alpha 0) - loss(alpha 1)``
    (``cf_gain_on_loss`` = 1; a batch-mean ``loss_fn`` gives one pair per part of a forward's
    batch, see :func:`paired_losses`);
    ``cf_gain`` is its mean, ``cf_gain_se`` its standard error, ``cf_gain_n`` the pairs. With
    BatchNorm, each arm runs with statistics re-estimated on the validation inputs under its own
    forward (:mod:`actors.execution.recalibrate`); the host's are restored exactly."""
    inputs, targets = split_batch(validation)
    if targets is None or int(inputs.shape[0]) == 0:
        return {}
    norms = tracked_norms(model)
    arms: dict[bool, Arm] = {}
    with probe_mode(model, device), torch.no_grad(), kept_norms(norms):
        for on in (True, False):
            mode, alpha = (on_mode(slot), 1.0) if on else (Mode.IDENTITY, 0.0)
            with slot.forced(mode, alpha):
                recalibrate(model, norms, inputs, chunk, device)
                arms[on] = arm(model, device, (inputs, targets), loss_fn, chunk)
    return paired_metrics(arms[True], arms[False])


def counterfactual(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    evaluate: Callable[[nn.Module], tuple[float, float]] | None,
    validation: ProbeBatch | None = None,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """Validation loss/accuracy with the seed at alpha 1 and at alpha 0: the paired per-example
    gain on ``validation`` when given, and the user's ``evaluate`` (which then wins for the
    ``cf_loss_*``/``cf_acc_*`` values) when given."""
    if slot.seed is None:
        return {}
    m: dict[str, float] = {}
    if validation is not None:
        m.update(paired_validation(model, slot, device, validation, loss_fn))
    if evaluate is not None:
        with probe_mode(model, device):
            with slot.forced(on_mode(slot), 1.0):
                loss1, acc1 = evaluate(model)
            with slot.forced(Mode.IDENTITY, 0.0):
                loss0, acc0 = evaluate(model)
        m.pop(ev.CF_LOSS_N, None)  # the losses are evaluate's now: their count is its own
        m.update(
            {
                ev.CF_LOSS_ON: float(loss1),
                ev.CF_ACC_ON: float(acc1),
                ev.CF_LOSS_OFF: float(loss0),
                ev.CF_ACC_OFF: float(acc0),
                ev.VAL_ACC: float(acc1),
            }
        )
    if m.get(ev.CF_GAIN_ON_LOSS) == 1.0:
        m[ev.VAL_LOSS] = m[ev.CF_LOSS_ON]
    return m


def reset_check(
    model: nn.Module,
    state: SlotState,
    device: torch.device,
    batch: ProbeBatch | None,
) -> dict[str, float]:
    """G5 evidence: nothing left in the slot and its output equals the host output exactly."""
    slot = state.slot
    m = {
        ev.MODULE_RELEASED: float(slot.seed is None),
        ev.HOOKS_RELEASED: float(not slot.hook_handles),
        ev.OPTIMIZER_RELEASED: float(state.optimizer is None),
        "params_remaining": float(sum(p.numel() for p in slot.parameters())),
    }
    if batch is not None:
        inputs, _ = split_batch(batch)
        with probe_mode(model, device):
            _, taps = run_probe(model, inputs, {}, [slot], grad=False)
        tap = taps.get(slot.slot_id)
        if tap is not None:
            delta = float((tap.out - tap.h).abs().max()) if tap.h.numel() else 0.0
            m[ev.RESET_MAX_ABS_DELTA] = delta
            m["output_equals_host"] = float(delta == 0.0 and tap.out.dtype == tap.h.dtype)
    return m


LATENCY_REPS = 5  # timed pairs of probe forwards behind ``latency_overhead``


def latency_overhead(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    batch: ProbeBatch,
    reps: int = LATENCY_REPS,
) -> dict[str, float]:
    """The seed's forward-time cost: ``latency_overhead`` = ``(t_on - t_off) / t_off`` and
    ``latency_added_us`` = ``t_on - t_off`` in µs (``latency_n`` pairs), from the best of ``reps``
    no-grad probe forwards with the seed fully on and off, taken in alternation (on a shared
    machine a burst of contention then slows both sides, not one side's every rep)."""
    inputs, _ = split_batch(batch)

    def timed(mode: Mode) -> float:
        with slot.forced(mode, 1.0), torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

    seed_on = on_mode(slot)
    with probe_mode(model, device):
        timed(Mode.IDENTITY), timed(seed_on)  # warm-up
        pairs = [(timed(Mode.IDENTITY), timed(seed_on)) for _ in range(reps)]
    off, on = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return {
        ev.LATENCY_OVERHEAD: max(0.0, (on - off) / off) if off > 0 else 0.0,
        ev.LATENCY_ADDED_US: max(0.0, on - off) * 1e6,
        ev.LATENCY_N: float(reps),
    }
