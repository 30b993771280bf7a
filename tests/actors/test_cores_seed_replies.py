"""The seed core's answers to execution acks and gate results (docs/design.md §2, docs/gates.md
G0): failed acks, the probe's memory evidence, the drop-probe wait, what each order asks for.

Expected values are written from the docs (G0's `seed_memory_headroom` >= 0, the stage table's
exit gates, wire.md §9's `ack:<STAGE>:<what>` waits), never read back from the core.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cores_harness import PASSING, SeedSim, command, germinate

from actors import gates
from actors.core import Decision
from contracts import evidence as ev
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate


@dataclass
class FailingSim(SeedSim):
    """A SeedSim whose execution fails every order into ``fail_stage``."""

    fail_stage: int = -1

    def ack_for(self, order: pb.ExecutionOrder, ok: bool = True) -> pb.ExecutionAck:
        ack = super().ack_for(order, ok and order.stage != self.fail_stage)
        if not ack.ok:
            ack.error = "device lost"
        return ack


def _explained(sim: SeedSim) -> None:
    """Every transition says why, every refusal what was asked and why."""
    for e in sim.events:
        if isinstance(e, pb.LifecycleTransition):
            assert e.cause, e
        elif isinstance(e, pb.LifecycleRefused):
            assert e.request and e.reason, e


def _transitions(sim: SeedSim) -> list[tuple[int, int, str]]:
    return [
        (e.from_stage, e.to_stage, e.cause)
        for e in sim.events
        if isinstance(e, pb.LifecycleTransition)
    ]


def _refusals(decision: Decision) -> list[pb.LifecycleRefused]:
    return [e for e in decision.events if isinstance(e, pb.LifecycleRefused)]


def _gate_requests(decision: Decision) -> list[pb.GateRequest]:
    return [o.message for o in decision.outgoing if isinstance(o.message, pb.GateRequest)]


def _to_training(sim: SeedSim) -> None:
    sim.report(1)
    sim.send(germinate(sim.slot))


# --------------------------------------------------------------------------- failed acks


def test_a_failed_training_order_culls_the_germinated_seed_once() -> None:
    """Execution failing to attach the seed (TRAINING order): GERMINATED -> CULLED -> EMBARGOED,
    the cause naming the failure; the same failed ack from another rank changes nothing."""
    sim = FailingSim(fail_stage=S.SEED_STAGE_TRAINING)
    _to_training(sim)
    (germinated, culled) = _transitions(sim)[-2:]
    assert germinated[:2] == (S.SEED_STAGE_GERMINATED, S.SEED_STAGE_CULLED)
    assert "device lost" in germinated[2]
    assert culled[:2] == (S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED)
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    training = next(o for o in sim.orders if o.stage == S.SEED_STAGE_TRAINING)
    again = sim.ack_for(training)
    assert not sim.send(again).events
    _explained(sim)


def test_a_failed_order_into_blending_culls_the_seed_with_the_failure() -> None:
    """A BLENDING order execution cannot apply culls the seed (BLENDING -> CULLED), the cause
    naming the failure."""
    sim = FailingSim(fail_stage=S.SEED_STAGE_BLENDING)
    _to_training(sim)
    for _ in range(4):
        if sim.state.stage == S.SEED_STAGE_EMBARGOED:
            break
        sim.advance(1000)
    culls = [t for t in _transitions(sim) if t[:2] == (S.SEED_STAGE_BLENDING, S.SEED_STAGE_CULLED)]
    assert len(culls) == 1 and "device lost" in culls[0][2]
    _explained(sim)


def test_a_failed_cull_order_is_refused_naming_the_order_and_the_failure() -> None:
    """Execution failing the cull order of an embargoed slot: a refusal of the 'ack of CULLED
    order' giving the failure; the slot stays EMBARGOED."""
    sim = FailingSim(fail_stage=S.SEED_STAGE_CULLED)
    _to_training(sim)
    sim.send(command(sim.slot, "cull"))
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    refused = [r for r in sim.events if isinstance(r, pb.LifecycleRefused)]
    assert [(r.request, r.reason) for r in refused] == [
        ("ack of CULLED order", "execution failed: device lost")
    ]
    _explained(sim)


# --------------------------------------------------------------------------- the G0 probe


def _probe(sim: SeedSim, ok: bool, metrics: dict[str, float], blueprint: str = "") -> Decision:
    order = sim.orders[-1]
    ack = pb.ExecutionAck(
        order_id=order.order_id,
        slot=order.slot,
        stage=order.stage,
        applied_at_step=order.apply_at_step,
        ok=ok,
        error="" if ok else "refused by execution",
    )
    ack.evidence.metrics.update(metrics)
    ack.evidence.blueprint = blueprint
    return sim.send(ack)


BUDGET = 1000.0


@pytest.mark.parametrize(
    ("metrics", "judged"),
    [
        ({}, False),
        ({ev.SEED_MEMORY_REQUEST: 16384.0}, False),  # no budget: nothing to exceed
        ({ev.SEED_MEMORY_BUDGET: BUDGET, ev.SEED_MEMORY_REQUEST: BUDGET}, False),  # headroom 0
        ({ev.SEED_MEMORY_BUDGET: BUDGET, ev.SEED_MEMORY_IN_USE: BUDGET}, False),
        (
            {
                ev.SEED_MEMORY_BUDGET: BUDGET,
                ev.SEED_MEMORY_IN_USE: 600.0,
                ev.SEED_MEMORY_REQUEST: 400.0,
            },
            False,
        ),
        ({ev.SEED_MEMORY_BUDGET: BUDGET, ev.SEED_MEMORY_REQUEST: BUDGET + 1}, True),
        ({ev.SEED_MEMORY_BUDGET: BUDGET, ev.SEED_MEMORY_IN_USE: BUDGET + 1}, True),
        (
            {
                ev.SEED_MEMORY_BUDGET: BUDGET,
                ev.SEED_MEMORY_IN_USE: 600.0,
                ev.SEED_MEMORY_REQUEST: 401.0,
            },
            True,
        ),
        ({ev.SEED_MEMORY_BUDGET: 1.0, ev.SEED_MEMORY_REQUEST: 2.0}, True),
        ({ev.SLOT_FREE: 0.0}, True),
        ({ev.SHAPE_MATCH: 0.0, ev.PARAMS_FINITE: 1.0, ev.DTYPE_MATCH: 1.0}, True),
        ({ev.SHAPE_MATCH: 1.0, ev.PARAMS_FINITE: 0.0, ev.DTYPE_MATCH: 1.0}, True),
        ({ev.SHAPE_MATCH: 1.0, ev.PARAMS_FINITE: 1.0, ev.DTYPE_MATCH: 0.0}, True),
        ({ev.SHAPE_MATCH: 1.0, ev.PARAMS_FINITE: 1.0, ev.OUTPUT_FINITE: 0.0}, False),
    ],
)
def test_a_refused_probe_goes_to_g0_only_when_a_g0_check_fails_on_it(
    metrics: dict[str, float], judged: bool
) -> None:
    """docs/gates.md G0: execution's refusal for a taken slot, for budget - in use - request
    below 0, or for a G0 check of the seed it measured as failed (parameters not finite, output
    shape or dtype) is judged by G0, which records the check; any other refusal (headroom exactly
    0 included, no budget, an output not finite: a G3 check) refuses the germination at once and
    waits for the probe to be dropped."""
    sim = SeedSim(auto=False)
    sim.send(germinate(sim.slot))
    decision = _probe(sim, ok=False, metrics=metrics)
    if judged:
        assert [r.gate for r in _gate_requests(decision)] == [G.SEED_GATE_G0_SANITY]
        assert _refusals(decision) == []
        assert str(sim.state.awaiting) == "gate:G0_SANITY"
    else:
        assert _gate_requests(decision) == []
        assert [(r.request, r.reason) for r in _refusals(decision)] == [
            ("germinate", "execution failed: refused by execution")
        ]
        assert str(sim.state.awaiting) == "ack:DORMANT:drop_probe"
        assert sim.orders[-1].stage == S.SEED_STAGE_DORMANT
    _explained(sim)


def test_a_failed_g0_waits_for_the_probe_to_be_dropped() -> None:
    """G0 failing: the germination is refused with the gate's reason and the slot waits for
    execution to drop the probe seed (ack:DORMANT:drop_probe)."""
    sim = SeedSim(auto=False)
    sim.evidence = dict(PASSING)
    sim.evidence[G.SEED_GATE_G0_SANITY] = {
        **PASSING[G.SEED_GATE_G0_SANITY],
        ev.BLUEPRINT_KNOWN: 0.0,
    }
    sim.send(germinate(sim.slot))
    (request,) = _gate_requests(sim.send(sim.ack_for(sim.orders[-1])))
    refused = _refusals(sim.send(_g0(sim, request)))
    assert [r.request for r in refused] == ["germinate"]
    assert refused[0].reason.startswith("gate G0_SANITY failed")
    assert str(sim.state.awaiting) == "ack:DORMANT:drop_probe"
    assert sim.orders[-1].stage == S.SEED_STAGE_DORMANT
    _explained(sim)


def _g0(sim: SeedSim, request: pb.GateRequest) -> pb.GateResult:
    result = gates.decide(gates.initial_state(), request, sim.ctx()).events[0]
    assert isinstance(result, pb.GateResult)
    return result


def test_g0_is_asked_about_the_blueprint_execution_found() -> None:
    """Germinated by artifact id alone: the G0 request names the blueprint execution's evidence
    names (the artifact's manifest), not the empty one of the command."""
    sim = SeedSim(auto=False)
    cmd = pb.SeedCommand(slot=sim.slot, germinate=pb.Germinate(artifact_id="ab" * 32))
    sim.send(cmd)
    decision = _probe(sim, ok=True, metrics={}, blueprint="residual_mlp")
    (request,) = _gate_requests(decision)
    assert request.evidence.blueprint == "residual_mlp"


# --------------------------------------------------------------------------- what orders ask


def test_each_order_asks_for_the_evidence_of_its_stages_exit_gate() -> None:
    """BLENDING orders ask for G2's evidence, SHADOWING for G3's, PROBATIONARY for G4's (the last
    two with counterfactual measurement); each gate-passed transition names its gate."""
    sim = SeedSim()
    _to_training(sim)
    while sim.state.stage != S.SEED_STAGE_FOSSILIZED:
        assert sim.step < 10_000
        sim.advance(400)
    by_stage = {o.stage: o for o in sim.orders}
    assert (
        by_stage[S.SEED_STAGE_BLENDING].evidence_for,
        by_stage[S.SEED_STAGE_SHADOWING].evidence_for,
        by_stage[S.SEED_STAGE_PROBATIONARY].evidence_for,
    ) == (G.SEED_GATE_G2_STABILITY, G.SEED_GATE_G3_INTERFACE, G.SEED_GATE_G4_SYSTEM_IMPACT)
    assert by_stage[S.SEED_STAGE_SHADOWING].counterfactual
    assert by_stage[S.SEED_STAGE_PROBATIONARY].counterfactual
    gated = [
        (e.to_stage, e.gate)
        for e in sim.events
        if isinstance(e, pb.LifecycleTransition) and e.has_gate
    ]
    assert gated == [
        (S.SEED_STAGE_GERMINATED, G.SEED_GATE_G0_SANITY),
        (S.SEED_STAGE_BLENDING, G.SEED_GATE_G1_GRADIENT_HEALTH),
        (S.SEED_STAGE_SHADOWING, G.SEED_GATE_G2_STABILITY),
        (S.SEED_STAGE_PROBATIONARY, G.SEED_GATE_G3_INTERFACE),
        (S.SEED_STAGE_FOSSILIZED, G.SEED_GATE_G4_SYSTEM_IMPACT),
    ]
    _explained(sim)


def test_a_germination_order_asks_for_g0_evidence() -> None:
    """The germination order asks execution to probe the seed and return G0's evidence."""
    sim = SeedSim(auto=False)
    sim.send(germinate(sim.slot))
    (order,) = sim.orders
    assert order.stage == S.SEED_STAGE_GERMINATED
    assert order.wants_evidence and order.evidence_for == G.SEED_GATE_G0_SANITY


def test_a_step_report_records_this_slots_alpha_and_tolerates_its_absence() -> None:
    """A report's entry for this slot sets the slot's alpha; a report without one keeps it."""
    sim = SeedSim(auto=False)
    report = pb.StepReport(step=3, slots=[pb.SlotReport(slot=sim.slot, alpha=0.25)])
    sim.send(report)
    assert sim.state.alpha == 0.25 and sim.state.last_step == 3
    sim.send(pb.StepReport(step=4, slots=[pb.SlotReport(slot="other", alpha=0.75)]))
    assert sim.state.alpha == 0.25 and sim.state.last_step == 4


def test_an_optimizer_adjustment_order_carries_the_adjustment() -> None:
    """adjust_optimizer in TRAINING orders execution to apply that very adjustment to the seed."""
    sim = SeedSim()
    _to_training(sim)
    sim.auto = False
    adjust = pb.AdjustOptimizer(lr_scale=0.5, weight_decay=0.01)
    sim.send(pb.SeedCommand(slot=sim.slot, adjust_optimizer=adjust))
    order = sim.orders[-1]
    assert order.stage == S.SEED_STAGE_TRAINING and order.adjust_optimizer == adjust


def test_a_commands_outcome_record_names_its_action() -> None:
    """wire.md §9: the command.outcome record of a germinate, of a cull, names that action."""
    sim = SeedSim(auto=False)
    decision = sim.send(germinate(sim.slot))
    assert [o.action for o in decision.outcomes] == ["germinate"]
    trained = SeedSim()
    _to_training(trained)
    decision = trained.send(command(trained.slot, "cull"))
    assert [o.action for o in decision.outcomes if o.action] == ["cull"]
