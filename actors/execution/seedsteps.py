"""The seeds' own steps, once per training step: each live seed's optimizer steps on its gradients
(clipped while BLENDING; a non-finite gradient or output, or an in-place write of the host
activation, raised as a safety signal instead), a fossil's zeroed non-finite outputs are
signalled, and each BLENDING seed's alpha moves on."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from actors.execution import stages as st
from actors.execution.memory import seed_raised
from actors.execution.optim import grad_norm
from actors.execution.slotstate import SlotState
from leyline import pb

if TYPE_CHECKING:
    from actors.execution.runtime import ExecutionRuntime


def train_seeds(rt: ExecutionRuntime, step: int) -> None:
    """Step each live seed's optimizer on its gradients (a seed out of memory is culled)."""
    for sid, state in rt.states.items():
        slot = state.slot
        if slot.seed is not None and slot.fossil:
            _fossil_outputs(rt, sid, state, step)
        if slot.seed is None or slot.stage not in st.ISOLATED_STAGES or slot.fossil:
            continue
        try:
            _train_seed(rt, sid, state)
        except Exception as exc:  # the seed leaves; the training loop goes on
            seed_raised(rt, state, "the seed's optimizer step", exc)


def _fossil_outputs(rt: ExecutionRuntime, sid: str, state: SlotState, step: int) -> None:
    """A fossil's non-finite outputs (zeroed in its forward) raised as a safety signal, read at
    the report cadence (reading the count waits for the device)."""
    if not step % max(1, rt.config.report_every):
        _signal_nonfinite(rt, sid, state, "fossil output (zeroed)")


def _signal_nonfinite(rt: ExecutionRuntime, sid: str, state: SlotState, what: str) -> None:
    """The slot's non-finite outputs counted since the last look (zeroed in its forward), folded
    into its statistics and raised as one safety signal."""
    nonfinite = float(state.slot.nonfinite)
    if nonfinite:
        state.output_nonfinite += int(nonfinite)
        state.slot.nonfinite.zero_()
        rt._safety(sid, pb.SAFETY_SIGNAL_NON_FINITE_OUTPUT, nonfinite, what)


def _train_seed(rt: ExecutionRuntime, sid: str, state: SlotState) -> None:
    slot, step = state.slot, rt.step
    if float(slot.inplace):
        _inplace_violation(rt, state, step)
    if slot.host_writes:
        _host_write_violation(rt, state)
    _signal_nonfinite(rt, sid, state, "seed output")
    opt = state.optimizer
    params = slot.seed_parameters()
    if opt is None or not any(p.grad is not None for p in params):
        return
    if slot.stage == st.BLENDING:
        norm = torch.nn.utils.clip_grad_norm_(params, st.adaptive_clip(float(slot.alpha)))
    else:
        norm = grad_norm(params)
    value = float(norm)
    # a backward that overflowed upstream of the seed, or everywhere (a loss scaler's skipped
    # step), is no seed's doing: neither a strike nor evidence against it, and no step
    if math.isfinite(value) or (_host_grads_finite(rt) and not _overflowed_upstream(rt, sid)):
        state.record_grad(value, training=slot.stage == st.TRAINING)
        if not math.isfinite(value):
            rt._safety(sid, pb.SAFETY_SIGNAL_NON_FINITE_GRAD, value, "seed gradient")
        elif not state.paused:
            opt.step()
    opt.zero_grad(set_to_none=True)


def advance_alpha(rt: ExecutionRuntime, step: int) -> None:
    """Move each BLENDING seed's alpha along its schedule and track its blend phase."""
    for state in rt.states.values():
        if state.slot.stage == st.BLENDING and state.slot.seed is not None:
            a = st.alpha_at(state.schedule, step + 1 - state.blend_start, state.blend_steps)
            state.slot.alpha.fill_(a)
            phase = st.blend_phase(state.phase, a, rt.config.alpha_hysteresis)
            state.phase_changes += int(phase != state.phase)
            state.phase = phase


def _host_write_violation(rt: ExecutionRuntime, state: SlotState) -> None:
    """The seed wrote host tensors (through a reference it kept) in its forwards."""
    writes, state.slot.host_writes = state.slot.host_writes, 0
    state.isolation_violations += 1
    detail = f"seed wrote host tensors in {writes} forward(s) (a reference it kept to the host)"
    rt._safety(state.slot.slot_id, pb.SAFETY_SIGNAL_ISOLATION_VIOLATION, float(writes), detail)


def _inplace_violation(rt: ExecutionRuntime, state: SlotState, step: int) -> None:
    writes = float(state.slot.inplace)
    state.slot.inplace.zero_()
    state.isolation_violations += 1
    detail = f"seed wrote its input (the host activation) in place {writes:g} time(s)"
    rt._safety(state.slot.slot_id, pb.SAFETY_SIGNAL_ISOLATION_VIOLATION, writes, detail)


def _overflowed_upstream(rt: ExecutionRuntime, sid: str) -> bool:
    """Whether a gradient that reached the seed's output in the user's backward was not finite
    (read only for a seed whose own gradient is not finite: one device wait, then)."""
    bad = rt.upstream_bad.get(sid)
    return bad is not None and bool(bad)


def _host_grads_finite(rt: ExecutionRuntime) -> bool:
    """Whether every host gradient of this step is finite (looked at only when a seed's is not:
    a step a loss scaler skips has non-finite gradients everywhere, and is no seed's fault)."""
    from actors.execution import host_parameters

    grads = [p.grad for p in host_parameters(rt.model, rt.slots) if p.grad is not None]
    return all(bool(torch.isfinite(g).all()) for g in grads)
