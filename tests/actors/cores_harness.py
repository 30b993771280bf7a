"""Test harness: drives a SeedActor core against the real gate core and a scripted execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from actors import gates, seed
from actors.core import Context, Decision, Message
from actors.seed import SeedState
from contracts import evidence as ev
from contracts.config import KasminaConfig
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate

PASSING: dict[int, dict[str, float]] = {
    G.SEED_GATE_G0_SANITY: {
        ev.BLUEPRINT_KNOWN: 1.0,
        ev.BLUEPRINT_SIGNED_OFF: 1.0,
        ev.PARAMS_FINITE: 1.0,
        ev.SHAPE_MATCH: 1.0,
        ev.DTYPE_MATCH: 1.0,
        ev.GERMINATION_MAX_ABS_DELTA: 0.0,
        ev.SEED_PARAMS: 1000.0,
        ev.SEED_MEMORY_BYTES: 4096.0,
        ev.SEED_MEMORY_BUDGET: 0.0,
        ev.SEED_MEMORY_IN_USE: 0.0,
        ev.SEED_MEMORY_REQUEST: 16384.0,
    },
    G.SEED_GATE_G1_GRADIENT_HEALTH: {
        ev.TRAINING_STEPS: 500.0,
        ev.GRAD_FINITE: 1.0,
        ev.GRAD_NORM_MIN: 1e-3,
        ev.GRAD_NORM_MAX: 1.0,
        ev.ISOLATION_VIOLATIONS: 0.0,
        ev.SEED_LOSS_GAIN: 0.5,
        ev.SEED_LOSS_GAIN_SE: 0.0625,
        ev.SEED_LOSS_GAIN_N: 512.0,
    },
    G.SEED_GATE_G2_STABILITY: {ev.ALPHA: 1.0, ev.LOSS_SPIKE_SIGMA: 1.0, ev.NONFINITE_COUNT: 0.0},
    G.SEED_GATE_G3_INTERFACE: {
        ev.OUTPUT_FINITE: 1.0,
        ev.SEED_HOST_NORM_RATIO: 0.5,
        ev.LATENCY_OVERHEAD: 0.1,
        ev.CF_LOSS_ON: 0.9,
        ev.CF_LOSS_OFF: 1.0,
    },
    G.SEED_GATE_G4_SYSTEM_IMPACT: {
        ev.CF_GAIN: 0.1,
        ev.CF_GAIN_SE: 0.01,
        ev.CF_GAIN_N: 1000.0,
        ev.CF_GAIN_FIXES: 120.0,
        ev.CF_GAIN_BREAKS: 20.0,
        ev.SEED_PARAMS: 1000.0,
        ev.HOST_PARAMS: 10000.0,
        ev.LATENCY_OVERHEAD: 0.1,
    },
    G.SEED_GATE_G5_RESET: {
        ev.MODULE_RELEASED: 1.0,
        ev.HOOKS_RELEASED: 1.0,
        ev.OPTIMIZER_RELEASED: 1.0,
        ev.RESET_MAX_ABS_DELTA: 0.0,
    },
}
"""Evidence that passes each gate with the default thresholds (G4 also needs the slot's baseline)."""

STAGE_GATE = {
    S.SEED_STAGE_TRAINING: G.SEED_GATE_G1_GRADIENT_HEALTH,
    S.SEED_STAGE_BLENDING: G.SEED_GATE_G2_STABILITY,
    S.SEED_STAGE_SHADOWING: G.SEED_GATE_G3_INTERFACE,
    S.SEED_STAGE_PROBATIONARY: G.SEED_GATE_G4_SYSTEM_IMPACT,
}


def germinate(slot: str, blueprint: str = "residual_mlp") -> pb.SeedCommand:
    """A germinate command."""
    return pb.SeedCommand(
        slot=slot, germinate=pb.Germinate(blueprint=blueprint, params={"width": 8})
    )


def command(slot: str, action: str) -> pb.SeedCommand:
    """A command with an empty action body (cull, pause, ...)."""
    cmd = pb.SeedCommand(slot=slot)
    getattr(cmd, action).SetInParent()
    return cmd


@dataclass
class SeedSim:
    """One slot's SeedActor with gates evaluated for real and execution acking every order."""

    slot: str = "layer1.s0"
    config: KasminaConfig = field(default_factory=KasminaConfig)
    state: SeedState = field(init=False)
    step: int = 0
    val_acc: float = 0.8
    evidence: dict[int, dict[str, float]] = field(default_factory=lambda: dict(PASSING))
    auto: bool = True  # route gate requests / orders automatically
    events: list[Message] = field(default_factory=list)
    outbox: list[Message] = field(default_factory=list)
    orders: list[pb.ExecutionOrder] = field(default_factory=list)
    results: list[pb.GateResult] = field(default_factory=list)
    log: list[tuple[str, Message, Decision]] = field(default_factory=list)  # (message id, in, out)
    _n: int = 0

    def __post_init__(self) -> None:
        self.state = seed.initial_state(self.slot)

    def ctx(self) -> Context:
        self._n += 1
        return Context(now_step=self.step, message_id=f"m{self._n}", config=self.config)

    def send(self, msg: Message) -> Decision:
        """Decide, fold, and (when auto) answer gate requests and orders."""
        ctx = self.ctx()
        decision = seed.decide(self.state, msg, ctx)
        self.log.append((ctx.message_id, msg, decision))
        folded = self.state
        for event in decision.events:
            folded = seed.evolve(folded, event)
        self.state = folded
        self.events.extend(decision.events)
        for out in decision.outgoing:
            self.outbox.append(out.message)
            if isinstance(out.message, pb.ExecutionOrder):
                self.orders.append(out.message)
        if self.auto:
            for out in decision.outgoing:
                self._route(out.message)
        return decision

    def _route(self, msg: Message) -> None:
        if isinstance(msg, pb.GateRequest):
            gd = gates.decide(gates.initial_state(), msg, self.ctx())
            result = gd.events[0]
            assert isinstance(result, pb.GateResult)
            self.results.append(result)
            self.send(result)
        elif isinstance(msg, pb.ExecutionOrder):
            self.send(self.ack_for(msg))

    def ack_for(self, order: pb.ExecutionOrder, ok: bool = True) -> pb.ExecutionAck:
        """Execution's ack of ``order`` (with gate evidence when it asked for some)."""
        ack = pb.ExecutionAck(
            order_id=order.order_id,
            slot=order.slot,
            stage=order.stage,
            applied_at_step=order.apply_at_step,
            ok=ok,
        )
        if order.wants_evidence:
            ack.evidence.metrics.update(self.evidence.get(order.evidence_for, {}))
            ack.evidence.blueprint = order.germinate.blueprint
        return ack

    def report(self, step: int, metrics: Mapping[str, float] | None = None) -> Decision:
        """A step report at ``step`` carrying this slot's metrics (default: the stage's evidence)."""
        self.step = step
        gate = STAGE_GATE.get(self.state.stage, -1)
        slot_metrics = dict(metrics) if metrics is not None else dict(self.evidence.get(gate, {}))
        return self.send(
            pb.StepReport(
                step=step,
                val_accuracy=self.val_acc,
                slots=[pb.SlotReport(slot=self.slot, stage=self.state.stage, metrics=slot_metrics)],
            )
        )

    def id_of(self, msg: Message) -> str:
        """The message id ``msg`` was decided under (the last time it was sent)."""
        return next(mid for mid, sent, _ in reversed(self.log) if sent is msg)

    def outcome(self, command_id: str) -> Message | None:
        """What a waiting client sees: the first transition or refusal carrying ``command_id``."""
        return next(
            (
                e
                for e in self.events
                if isinstance(e, pb.LifecycleTransition | pb.LifecycleRefused)
                and e.command_id == command_id
            ),
            None,
        )

    def advance(self, steps: int) -> Decision:
        """One report ``steps`` after the current step."""
        return self.report(self.step + steps)
