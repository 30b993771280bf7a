"""A simulated execution runtime: speaks the execution protocol without torch.

It stands in for :class:`actors.execution.ExecutionRuntime` where only the lifecycle matters
(scenarios, actor tests, the chaos harness): orders apply exactly at ``apply_at_step``, acks carry
evidence, step reports carry per-slot metrics. The evidence passes every gate unless a gate is
listed in ``fail_gates``; ``leak_slots`` produce isolation-violation safety signals.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from actors.core import released
from contracts import evidence as ev
from leyline import pb

G = pb.SeedLifecycleGate
S = pb.SeedLifecycleStage

PASSING: dict[str, float] = {
    ev.BLUEPRINT_KNOWN: 1.0,
    ev.BLUEPRINT_SIGNED_OFF: 1.0,
    ev.PARAMS_FINITE: 1.0,
    ev.SHAPE_MATCH: 1.0,
    ev.DTYPE_MATCH: 1.0,
    ev.GERMINATION_MAX_ABS_DELTA: 0.0,
    ev.SEED_PARAMS: 1000.0,
    ev.SEED_MEMORY_BYTES: 4000.0,
    ev.SEED_MEMORY_BUDGET: 0.0,
    ev.SEED_MEMORY_IN_USE: 0.0,
    ev.SEED_MEMORY_REQUEST: 16000.0,
    ev.TRAINING_STEPS: 1e9,
    ev.GRAD_NORM_MIN: 0.01,
    ev.GRAD_NORM_MAX: 1.0,
    ev.GRAD_FINITE: 1.0,
    ev.ISOLATION_VIOLATIONS: 0.0,
    ev.SEED_LOSS_GAIN: 0.2,
    ev.SEED_LOSS_GAIN_SE: 0.02,
    ev.SEED_LOSS_GAIN_N: 1000.0,
    ev.ALPHA: 1.0,
    ev.LOSS_SPIKE_SIGMA: 0.5,
    ev.NONFINITE_COUNT: 0.0,
    ev.OUTPUT_FINITE: 1.0,
    ev.SEED_HOST_NORM_RATIO: 0.5,
    ev.LATENCY_OVERHEAD: 0.05,
    ev.CF_LOSS_ON: 0.5,
    ev.CF_LOSS_OFF: 0.6,
    ev.CF_ACC_ON: 0.95,
    ev.CF_ACC_OFF: 0.90,
    ev.CF_GAIN: 0.05,
    ev.CF_GAIN_SE: 0.01,
    ev.CF_GAIN_N: 1000.0,
    ev.CF_GAIN_FIXES: 60.0,
    ev.CF_GAIN_BREAKS: 10.0,
    ev.HOST_PARAMS: 100000.0,
    ev.BASELINE_ACC: 0.90,
    ev.VAL_ACC: 0.95,
    ev.OPEN_STRIKES: 0.0,
    ev.MODULE_RELEASED: 1.0,
    ev.HOOKS_RELEASED: 1.0,
    ev.OPTIMIZER_RELEASED: 1.0,
    ev.RESET_MAX_ABS_DELTA: 0.0,
}

FAILING: dict[int, dict[str, float]] = {
    G.SEED_GATE_G0_SANITY: {ev.SHAPE_MATCH: 0.0},
    G.SEED_GATE_G1_GRADIENT_HEALTH: {ev.ISOLATION_VIOLATIONS: 3.0},
    G.SEED_GATE_G2_STABILITY: {ev.LOSS_SPIKE_SIGMA: 50.0},
    G.SEED_GATE_G3_INTERFACE: {ev.OUTPUT_FINITE: 0.0},
    G.SEED_GATE_G4_SYSTEM_IMPACT: {
        ev.CF_ACC_ON: 0.80,
        ev.CF_GAIN: -0.1,
        ev.CF_GAIN_FIXES: 10.0,
        ev.CF_GAIN_BREAKS: 110.0,
    },
    G.SEED_GATE_G5_RESET: {ev.RESET_MAX_ABS_DELTA: 0.5},
}


@dataclass
class SimSlot:
    """A slot's simulated stage and α."""

    stage: int = S.SEED_STAGE_DORMANT
    entered: int = 0
    alpha: float = 0.0
    paused: bool = False
    blueprint: str = ""
    applied: list[tuple[int, int]] = field(default_factory=list)  # (step, stage) history


class SimRuntime:
    """Duck-types ExecutionRuntime for :class:`actors.execution.actor.ExecutionActor`."""

    def __init__(
        self,
        slots: Iterable[str],
        *,
        rank: int = 0,
        world_size: int = 1,
        fail_gates: Iterable[int] = (),
        leak_slots: Iterable[str] = (),
        report_every: int = 10,
        barrier_frequency: int = 10,
        blend_steps: int = 50,
        byzantine: bool = False,
    ) -> None:
        self.slots: dict[str, SimSlot] = {s: SimSlot() for s in slots}
        self.rank = rank
        self.world_size = world_size
        self.fail_gates = set(fail_gates)
        self.leak_slots = set(leak_slots)
        self.report_every = report_every
        self.barrier_frequency = barrier_frequency
        self.blend_steps = blend_steps
        self.byzantine = byzantine
        self.step = -1
        self.committed_barrier = -1
        self._lock = threading.Lock()
        self._inbox: list[pb.ExecutionOrder] = []
        self._pending: list[pb.ExecutionOrder] = []
        self._outbox: list[tuple[str, object]] = []
        self.applied_orders: list[tuple[str, int]] = []  # (order_id, step)
        self.checkpoint_requests: list[tuple[str, int]] = []  # (reason, step)
        self.rollback_requests: list[tuple[str, tuple[str, ...], int]] = []

    def submit(self, order: pb.ExecutionOrder) -> None:
        with self._lock:
            self._inbox.append(order)

    def submit_pruning(self, order: pb.PruningOrder) -> None:
        """Refuse it: a simulated runtime has no host modules to mask."""
        ack = pb.PruningAck(order_id=order.order_id, ok=False, error="no host to prune")
        self._put("pruning.ack", ack)

    def drain_outbox(self) -> list[tuple[str, object]]:
        with self._lock:
            out, self._outbox = self._outbox, []
        return out

    def connect(self, notify: Callable[[], None]) -> None:
        """Nothing to connect: the simulated runtime is flushed on the actor's interval."""

    def barrier_committed(self, barrier_step: int) -> None:
        """Release the orders gated on ``barrier_step`` (or an earlier barrier)."""
        self.committed_barrier = max(self.committed_barrier, barrier_step)

    def request_checkpoint(self, reason: str, step: int = 0) -> None:
        """Record the request (a simulated runtime has nothing to write)."""
        self.checkpoint_requests.append((reason, step))

    def request_rollback(self, reason: str, slots: Sequence[str] = (), step: int = 0) -> None:
        """Record the request (a simulated runtime has no host to roll back)."""
        self.rollback_requests.append((reason, tuple(slots), step))

    def _put(self, kind: str, message: object) -> None:
        with self._lock:
            self._outbox.append((kind, message))

    def evidence(self, gate: int | None = None) -> dict[str, float]:
        """Metrics as measured now: passing, with the configured failures."""
        metrics = dict(PASSING)
        for failing in self.fail_gates:
            if gate is None or gate == failing:
                metrics.update(FAILING[failing])
        return metrics

    def _apply(self, order: pb.ExecutionOrder, step: int) -> None:
        slot = self.slots[order.slot]
        ack = pb.ExecutionAck(
            order_id=order.order_id, slot=order.slot, applied_at_step=step, ok=True, rank=self.rank
        )
        target = order.stage
        if target == S.SEED_STAGE_GERMINATED and order.wants_evidence:
            ack.stage = target  # probe only: the seed stays off the forward
            ack.evidence.blueprint = order.germinate.blueprint
            ack.evidence.metrics.update(self.evidence(G.SEED_GATE_G0_SANITY))
            slot.blueprint = order.germinate.blueprint
        else:
            if order.paused != slot.paused:
                slot.paused = order.paused
            if target != slot.stage:
                slot.stage, slot.entered = int(target), step
                slot.applied.append((step, target))
            ack.stage = pb.SeedLifecycleStage.ValueType(slot.stage)
            if target == S.SEED_STAGE_RESETTING:
                ack.evidence.metrics.update(self.evidence(G.SEED_GATE_G5_RESET))
        self.applied_orders.append((order.order_id, step))
        self._put("exec.ack", ack)

    def _alpha(self, slot: SimSlot, step: int) -> float:
        if slot.stage == S.SEED_STAGE_BLENDING and not slot.paused:
            return min(1.0, (step - slot.entered) / self.blend_steps)
        if slot.stage in (
            S.SEED_STAGE_SHADOWING,
            S.SEED_STAGE_PROBATIONARY,
            S.SEED_STAGE_FOSSILIZED,
        ):
            return 1.0
        return slot.alpha if slot.stage == S.SEED_STAGE_BLENDING else 0.0

    def digest(self) -> bytes:
        """Digest of the simulated state (what a rank votes at a barrier)."""
        text = repr(sorted((k, v.stage, v.paused) for k, v in self.slots.items()))
        if self.byzantine:
            text += f"rank{self.rank}"
        return hashlib.sha256(text.encode()).digest()

    def on_step(self, step: int, loss: float = 1.0, *, val_accuracy: float = 0.9) -> None:
        """Close step ``step`` (same contract as ExecutionRuntime.on_step)."""
        self.step = step
        self._apply_due(step)
        for sid, slot in self.slots.items():
            slot.alpha = self._alpha(slot, step)
            if sid in self.leak_slots and slot.stage in (
                S.SEED_STAGE_TRAINING,
                S.SEED_STAGE_BLENDING,
            ):
                self._put(
                    "safety.signal",
                    pb.SafetySignal(
                        slot=sid,
                        kind=pb.SAFETY_SIGNAL_ISOLATION_VIOLATION,
                        step=step,
                        value=1.0,
                        detail="host parameter reachable from the seed output",
                        rank=self.rank,
                    ),
                )
        if self.report_every and step % self.report_every == 0:
            self._report(step, loss, val_accuracy)
        if self.barrier_frequency and step % self.barrier_frequency == 0 and step > 0:
            vote = pb.BarrierVote(
                barrier_step=step, rank=self.rank, world_size=self.world_size, digest=self.digest()
            )
            self._put("barrier.vote", vote)

    def _apply_due(self, step: int) -> None:
        """Apply the orders due by ``step`` (those gated on a barrier once it committed)."""
        with self._lock:
            self._pending.extend(self._inbox)
            self._inbox.clear()
        commit = self.committed_barrier
        due = sorted(
            (o for o in self._pending if o.apply_at_step <= step and released(o, commit)),
            key=lambda o: o.apply_at_step,
        )
        self._pending = [o for o in self._pending if o not in due]
        for order in due:
            if order.slot in self.slots:
                self._apply(order, step)

    def _report(self, step: int, loss: float, val_accuracy: float) -> None:
        """The step report (each slot's stage, alpha and gate evidence) and the raw telemetry."""
        report = pb.StepReport(
            rank=self.rank, step=step, loss=loss, val_loss=loss, val_accuracy=val_accuracy
        )
        for sid, slot in self.slots.items():
            entry = report.slots.add(slot=sid, stage=slot.stage, alpha=slot.alpha)
            entry.metrics.update(self.evidence())
            entry.metrics[ev.ALPHA] = slot.alpha if slot.stage == S.SEED_STAGE_BLENDING else 1.0
            for failing in self.fail_gates:
                entry.metrics.update(FAILING[failing])
        self._put("step.report", report)
        raw = pb.TelemetryRaw(slot="", region=f"rank{self.rank}", step=step, metrics={"loss": loss})
        self._put("telemetry.raw", raw)
