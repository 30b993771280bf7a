"""The demo's execution side: the real :class:`ExecutionRuntime` plus two trainer-side pieces.

- ``shadow_backward``: DESIGN §2 lets a seed in TRAINING learn "from a shadow loss". The demo's
  trainer does that (growth-anchors §3.2): one extra forward with the seed at alpha 1 (its input
  still detached) and ``torch.autograd.grad`` on the seed's parameters only, which replaces the
  straight-through gradient. The host's gradients are never touched, so the host stays bit-identical
  to a seedless run. (A straight-through seed never sees its own output in the loss, so its
  gradient does not shrink as it learns and Adam drives it to grow without bound.)
- ``DemoRuntime`` adds to each step report the evidence the exit gates G2-G4 read that the runtime
  otherwise measures only for acks: the loss-spike z-score of the current stage, and while
  SHADOWING/PROBATIONARY the counterfactual (alpha 1 vs 0) and the slot's latency overhead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actors.execution import ExecutionRuntime, SeedSlot
from actors.execution import stages as st
from actors.execution.evidence import latency_overhead
from actors.execution.mailbox import KIND_STEP_REPORT, KIND_TELEMETRY
from contracts import evidence as ev
from leyline import pb

_CF_STAGES = frozenset({st.SHADOWING, st.PROBATIONARY})


def shadow_backward(model: nn.Module, slots: dict[str, SeedSlot], x: Tensor, y: Tensor) -> int:
    """Give every seed in TRAINING the gradient of the task loss with it fully on (alpha 1).

    Call after the host's backward (and optimizer step), before ``runtime.on_step``. Returns the
    number of seeds served."""
    served = 0
    for slot in slots.values():
        if slot.seed is None or slot.stage != st.TRAINING or slot.fossil:
            continue
        params = slot.seed_parameters()
        on = st.Mode.CONVEX if slot.blend_mode == pb.BLEND_MODE_CONVEX else st.Mode.RESIDUAL
        with slot.forced(on, 1.0):
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.detach()
        served += 1
    return served


class DemoRuntime(ExecutionRuntime):
    """An :class:`ExecutionRuntime` whose step reports carry the G2-G4 evidence of each slot."""

    def stage_evidence(self, sid: str) -> dict[str, float]:
        """Loss spike of the current stage; counterfactual and latency while SHADOWING/PROBATIONARY."""
        state = self.states[sid]
        slot = state.slot
        if slot.seed is None or slot.fossil:
            return {}
        out = {ev.LOSS_SPIKE_SIGMA: self._loss_spike(state.stage_since)}
        if slot.stage in _CF_STAGES:
            out.update(self.counterfactual(sid))
            if self.probe_batch is not None:
                out[ev.LATENCY_OVERHEAD] = latency_overhead(
                    self.model, slot, self.device, self.probe_batch
                )
        return out

    def _report(self, step: int, val_loss: float, val_accuracy: float) -> None:
        report = pb.StepReport(
            rank=self.rank,
            step=step,
            loss=self.last_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
        )
        for sid, state in self.states.items():
            metrics = state.metrics(step)
            metrics.update(self.stage_evidence(sid))
            metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
            report.slots.add(
                slot=sid, stage=state.slot.stage, alpha=metrics["alpha"], metrics=metrics
            )
            if state.slot.seed is not None:
                self.outbox.put(
                    KIND_TELEMETRY,
                    pb.TelemetryRaw(slot=sid, region=self.region, step=step, metrics=metrics),
                )
        self.outbox.put(KIND_STEP_REPORT, report)
