"""Measurements taken with probe forwards: isolation probes with shadow losses, counterfactual
evaluation (alpha=1 vs alpha=0) and the G5 reset check."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from actors.execution.isolation import IsolationReport, autograd_probe
from actors.execution.probing import (
    LossFn,
    ProbeBatch,
    probe_loss,
    probe_mode,
    run_probe,
    split_batch,
)
from actors.execution.slot import SeedSlot, host_parameters
from actors.execution.slotstate import SlotState
from actors.execution.stages import Mode
from contracts import evidence as ev
from leyline import pb


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
        shadow = probe_loss(out.detach(), targets, loss_fn)
        if shadow is not None:
            off = {s.slot: (Mode.IDENTITY, None) for s in active}
            base, _ = run_probe(model, inputs, off, [], grad=False)
            host_loss = probe_loss(base, targets, loss_fn)
            for state in active:
                value = float(shadow)
                if math.isnan(state.seed_loss_first):
                    state.seed_loss_first = value
                state.seed_loss_last = value
                state.host_probe_loss = float(host_loss) if host_loss is not None else math.nan
    return reports


def counterfactual(
    model: nn.Module,
    slot: SeedSlot,
    device: torch.device,
    evaluate: Callable[[nn.Module], tuple[float, float]],
) -> dict[str, float]:
    """Validation loss/accuracy with the seed at alpha 1 and at alpha 0 (the user's evaluate)."""
    if slot.seed is None:
        return {}
    with probe_mode(model, device):
        with slot.forced(on_mode(slot), 1.0):
            loss1, acc1 = evaluate(model)
        with slot.forced(Mode.IDENTITY, 0.0):
            loss0, acc0 = evaluate(model)
    return {
        ev.CF_LOSS_ON: float(loss1),
        ev.CF_ACC_ON: float(acc1),
        ev.CF_LOSS_OFF: float(loss0),
        ev.CF_ACC_OFF: float(acc0),
        ev.VAL_ACC: float(acc1),
    }


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


def latency_overhead(
    model: nn.Module, slot: SeedSlot, device: torch.device, batch: ProbeBatch, reps: int = 3
) -> float:
    """Relative forward-time overhead of the seed: best of ``reps`` no-grad probe forwards with
    the seed fully on vs off, ``(t_on - t_off) / t_off``."""
    inputs, _ = split_batch(batch)

    def best(mode: Mode) -> float:
        times = []
        with slot.forced(mode, 1.0), torch.no_grad():
            for _ in range(reps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                model(inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
        return min(times)

    with probe_mode(model, device):
        best(Mode.IDENTITY)  # warm-up
        off, on = best(Mode.IDENTITY), best(on_mode(slot))
    return max(0.0, (on - off) / off) if off > 0 else 0.0
