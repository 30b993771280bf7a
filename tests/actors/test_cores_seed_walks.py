"""Walks through the lifecycle with the real gate core and a scripted execution."""

from __future__ import annotations

from dataclasses import replace

from cores_harness import PASSING, SeedSim, command, germinate

from actors import gates, seed
from actors.core import Context, next_boundary
from contracts import evidence as ev
from contracts.config import KasminaConfig
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate
V = pb.VerdictAction


def _stages(sim: SeedSim) -> list[tuple[int, int]]:
    return [(e.from_stage, e.to_stage) for e in sim.events if isinstance(e, pb.LifecycleTransition)]


def _germinated(sim: SeedSim) -> SeedSim:
    sim.report(1)
    sim.send(germinate(sim.slot))
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    return sim


def test_walk_to_fossilized_with_passing_evidence() -> None:
    """DORMANT -> GERMINATED -> TRAINING -> BLENDING -> SHADOWING -> PROBATIONARY -> FOSSILIZED."""
    sim = _germinated(SeedSim())
    for _ in range(4):
        sim.advance(400)
    assert _stages(sim) == [
        (S.SEED_STAGE_UNKNOWN, S.SEED_STAGE_DORMANT),
        (S.SEED_STAGE_DORMANT, S.SEED_STAGE_GERMINATED),
        (S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING),
        (S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING),
        (S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING),
        (S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY),
        (S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED),
    ]
    assert [r.gate for r in sim.results] == [0, 1, 2, 3, 4] and all(r.passed for r in sim.results)
    shadow = next(o for o in sim.orders if o.stage == S.SEED_STAGE_SHADOWING)
    proba = next(o for o in sim.orders if o.stage == S.SEED_STAGE_PROBATIONARY)
    assert shadow.counterfactual and proba.counterfactual
    g0 = sim.orders[0]
    assert g0.stage == S.SEED_STAGE_GERMINATED and g0.wants_evidence and g0.germinate.blueprint


def test_forced_gate_failure_walks_cull_embargo_reset_dormant() -> None:
    """A failing G1 culls; embargo, reset (G5) and DORMANT follow on step budgets."""
    sim = _germinated(SeedSim())
    bad = dict(PASSING[G.SEED_GATE_G1_GRADIENT_HEALTH], isolation_violations=2.0)
    sim.report(sim.step + 400, bad)
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    cull = next(
        e
        for e in sim.events
        if isinstance(e, pb.LifecycleTransition) and e.to_stage == S.SEED_STAGE_CULLED
    )
    assert cull.has_gate and cull.gate == G.SEED_GATE_G1_GRADIENT_HEALTH
    assert "isolation_violations=2" in cull.cause
    assert any(o.stage == S.SEED_STAGE_CULLED for o in sim.orders)
    sim.advance(sim.config.lifecycle.embargo_steps - 1)
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    sim.advance(50)
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    assert _stages(sim)[-4:] == [
        (S.SEED_STAGE_TRAINING, S.SEED_STAGE_CULLED),
        (S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED),
        (S.SEED_STAGE_EMBARGOED, S.SEED_STAGE_RESETTING),
        (S.SEED_STAGE_RESETTING, S.SEED_STAGE_DORMANT),
    ]
    assert sim.results[-1].gate == G.SEED_GATE_G5_RESET and sim.results[-1].passed
    assert sim.state.blueprint == "" and sim.state.awaiting is None


def test_germinate_refused_while_embargoed() -> None:
    """Germination during the embargo is refused with reason 'slot embargoed'."""
    sim = _germinated(SeedSim())
    sim.send(command(sim.slot, "cull"))
    d = sim.send(germinate(sim.slot))
    assert [e.reason for e in d.events if isinstance(e, pb.LifecycleRefused)] == ["slot embargoed"]


def test_g0_failure_stays_dormant_and_drops_probe() -> None:
    """A failing G0 refuses germination, keeps DORMANT and orders execution to drop the probe."""
    sim = SeedSim()
    sim.evidence[G.SEED_GATE_G0_SANITY] = dict(PASSING[0], shape_match=0.0)
    sim.report(1)
    sim.send(germinate(sim.slot))
    assert sim.state.stage == S.SEED_STAGE_DORMANT and sim.state.awaiting is None
    refused = [e for e in sim.events if isinstance(e, pb.LifecycleRefused)]
    assert "G0_SANITY failed" in refused[0].reason and "shape_match" in refused[0].reason
    assert sim.orders[-1].stage == S.SEED_STAGE_DORMANT
    checks = {c.name: c for c in sim.results[0].checks}
    assert checks[ev.SLOT_FREE].passed and checks[ev.SLOT_EMBARGOED].passed


def test_g0_records_a_germination_over_the_memory_budget() -> None:
    """Execution refusing a seed over the rank's memory budget goes to G0, which fails on
    seed_memory_headroom with the budget, the use and the request in its evidence."""
    sim = SeedSim(auto=False)
    sim.report(1)
    sim.send(germinate(sim.slot))
    ack = sim.ack_for(sim.orders[-1], ok=False)
    ack.error = "seed memory budget exceeded"
    memory = {ev.SEED_MEMORY_BUDGET: 1000.0, ev.SEED_MEMORY_IN_USE: 600.0}
    ack.evidence.metrics.update({**memory, ev.SEED_MEMORY_REQUEST: 500.0})
    d = sim.send(ack)
    (request,) = [o.message for o in d.outgoing if isinstance(o.message, pb.GateRequest)]
    assert request.gate == G.SEED_GATE_G0_SANITY
    assert request.evidence.metrics[ev.SEED_MEMORY_BUDGET] == 1000.0
    result = gates.evaluate(request.gate, request.evidence, sim.config.gates)
    (check,) = [c for c in result.checks if c.name == "seed_memory_headroom"]
    assert not result.passed and not check.passed and check.value == -100.0
    result.request_id, result.slot, result.step = request.request_id, request.slot, request.step
    sim.send(result)
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    refused = [e for e in sim.events if isinstance(e, pb.LifecycleRefused)]
    assert "seed_memory_headroom" in refused[-1].reason and "budget 1000 B" in refused[-1].reason


def test_g0_reads_the_slot_state_execution_found() -> None:
    """Execution finding the slot taken (an ack refused with slot_free = 0) fails G0 on slot_free."""
    sim = SeedSim(auto=False)
    sim.report(1)
    sim.send(germinate(sim.slot))
    order = sim.orders[-1]
    ack = sim.ack_for(order, ok=False)
    ack.error = "slot is not free"
    ack.evidence.metrics.update({ev.SLOT_FREE: 0.0, ev.SLOT_EMBARGOED: 1.0})
    d = sim.send(ack)
    (request,) = [o.message for o in d.outgoing if isinstance(o.message, pb.GateRequest)]
    assert request.gate == G.SEED_GATE_G0_SANITY
    result = gates.evaluate(request.gate, request.evidence, sim.config.gates)
    checks = {c.name: c for c in result.checks}
    assert not result.passed
    assert not checks[ev.SLOT_FREE].passed and checks[ev.SLOT_FREE].value == 0.0
    assert not checks[ev.SLOT_EMBARGOED].passed and checks[ev.SLOT_EMBARGOED].value == 1.0
    result.request_id, result.slot, result.step = request.request_id, request.slot, request.step
    sim.send(result)
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    refused = [e for e in sim.events if isinstance(e, pb.LifecycleRefused)]
    assert "slot_free" in refused[-1].reason


def test_a_seed_of_the_wrong_shape_fails_g0_with_its_check_recorded() -> None:
    """Execution refusing a germination on a G0 check of the seed (shape_match = 0) left only a
    text refusal; G0 now judges the evidence and its result carries the failing check."""
    sim = SeedSim(auto=False)
    sim.report(1)
    sim.send(germinate(sim.slot))
    ack = sim.ack_for(sim.orders[-1], ok=False)
    ack.error = "germination checks failed: ['shape_match']"
    ack.evidence.metrics.update({ev.SHAPE_MATCH: 0.0, ev.PARAMS_FINITE: 1.0, ev.DTYPE_MATCH: 1.0})
    d = sim.send(ack)
    (request,) = [o.message for o in d.outgoing if isinstance(o.message, pb.GateRequest)]
    assert request.gate == G.SEED_GATE_G0_SANITY
    result = gates.evaluate(request.gate, request.evidence, sim.config.gates)
    checks = {c.name: c for c in result.checks}
    assert not result.passed and not checks[ev.SHAPE_MATCH].passed
    assert checks[ev.SHAPE_MATCH].value == 0.0 and checks[ev.PARAMS_FINITE].passed
    result.request_id, result.slot, result.step = request.request_id, request.slot, request.step
    sim.send(result)
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    refused = [e for e in sim.events if isinstance(e, pb.LifecycleRefused)]
    assert "shape_match" in refused[-1].reason


def test_g5_failure_retries_after_delay() -> None:
    """A failing G5 keeps RESETTING with a refusal, and re-orders the reset after the delay."""
    sim = _germinated(SeedSim())
    sim.send(command(sim.slot, "cull"))
    sim.evidence[G.SEED_GATE_G5_RESET] = dict(PASSING[5], hooks_released=0.0)
    sim.advance(sim.config.lifecycle.embargo_steps)
    assert sim.state.stage == S.SEED_STAGE_RESETTING and sim.state.retry_at > sim.step
    assert isinstance(sim.events[-1], pb.LifecycleRefused)
    resets = sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders)
    sim.advance(1)
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets
    sim.evidence[G.SEED_GATE_G5_RESET] = dict(PASSING[5])
    sim.advance(sim.config.lifecycle.reset_retry_steps)
    assert sim.state.stage == S.SEED_STAGE_DORMANT


def test_pause_halts_budgets_and_resume_continues() -> None:
    """A paused slot does not request its gate; resume shifts the stage clock by the pause."""
    sim = _germinated(SeedSim())
    entered = sim.state.stage_entered_step
    sim.advance(10)
    sim.send(command(sim.slot, "pause"))
    assert sim.state.paused and sim.orders[-1].paused
    sim.advance(1000)
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    sim.send(command(sim.slot, "resume"))
    assert not sim.state.paused and not sim.orders[-1].paused
    shifted = sim.state.stage_entered_step
    assert shifted == entered + 1000
    sim.report(shifted + sim.config.lifecycle.training_steps - 1)
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    sim.advance(1)
    assert sim.state.stage == S.SEED_STAGE_BLENDING


def test_apply_at_step_is_next_boundary_with_full_lead() -> None:
    """Orders apply on the first barrier boundary strictly after now + frequency."""
    assert next_boundary(5, 10) == 20
    assert next_boundary(10, 10) == 30
    assert next_boundary(0, 1) == 2
    sim = SeedSim(config=KasminaConfig.load(env={}, overrides={"barrier.frequency": 10}))
    sim.report(37)
    sim.send(germinate(sim.slot))
    assert sim.orders[0].apply_at_step == 50


def test_stale_or_mismatched_result_and_ack_refused() -> None:
    """A gate result with the wrong request id, or an ack of another order, is refused."""
    sim = SeedSim(auto=False)
    sim.report(1)
    sim.send(germinate(sim.slot))
    order = sim.orders[-1]
    wrong = sim.ack_for(order)
    wrong.order_id = "other"
    d = sim.send(wrong)
    assert (
        isinstance(d.events[-1], pb.LifecycleRefused) and str(sim.state.awaiting) == "g0_evidence"
    )
    sim.send(sim.ack_for(order))
    assert str(sim.state.awaiting) == "gate:G0_SANITY"
    d = sim.send(
        pb.GateResult(request_id="stale", slot=sim.slot, gate=G.SEED_GATE_G0_SANITY, passed=True)
    )
    assert isinstance(d.events[-1], pb.LifecycleRefused)
    assert sim.state.stage == S.SEED_STAGE_DORMANT


def test_duplicate_ack_from_another_rank_is_idempotent() -> None:
    """The second ack of an already acknowledged order changes nothing and emits nothing."""
    sim = SeedSim(auto=False)
    sim.report(1)
    sim.send(germinate(sim.slot))
    ack = sim.ack_for(sim.orders[-1])
    sim.send(ack)
    before = sim.state
    again = pb.ExecutionAck()
    again.CopyFrom(ack)
    again.rank = 1
    assert sim.send(again).empty and sim.state == before


def test_safety_verdicts_count_strikes_and_cull() -> None:
    """STRIKE verdicts record strikes; a CULL verdict culls with cause 'circuit breaker open'."""
    sim = _germinated(SeedSim())
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=1))
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=2))
    assert sim.state.strikes == 2 and sim.state.stage == S.SEED_STAGE_TRAINING
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_CULL, strikes=3))
    cull = [e for e in sim.events if isinstance(e, pb.LifecycleTransition)][-2]
    assert cull.to_stage == S.SEED_STAGE_CULLED and cull.cause.startswith("circuit breaker open")
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED


def test_run_wide_emergency_stop_culls_active_slot() -> None:
    """A run-wide (slot '') emergency-stop verdict culls with cause 'emergency stop'."""
    sim = _germinated(SeedSim())
    sim.send(pb.SafetyVerdict(slot="", action=V.VERDICT_EMERGENCY_STOP))
    cull = [e for e in sim.events if isinstance(e, pb.LifecycleTransition)][-2]
    assert cull.cause == "emergency stop"


def test_g4_evidence_includes_baseline_and_strikes() -> None:
    """The G4 request carries the pre-germination baseline, current val acc and open strikes."""
    sim = _germinated(SeedSim(val_acc=0.7))
    sim.val_acc = 0.9
    for _ in range(4):
        sim.advance(400)
    g4 = sim.results[-1]
    values = {c.name: c.value for c in g4.checks}
    assert abs(values["baseline_regression"] - (0.7 - 0.9)) < 1e-9 and g4.passed
    assert sim.state.baseline_acc == 0.7


def test_terminated_refuses_everything() -> None:
    """After terminate, every command is refused and step reports are no-ops."""
    sim = SeedSim()
    sim.report(1)
    sim.send(command(sim.slot, "terminate"))
    assert sim.state.stage == S.SEED_STAGE_TERMINATED
    for action in ("cull", "pause", "terminate"):
        d = sim.send(command(sim.slot, action))
        assert [getattr(e, "reason", None) for e in d.events] == ["slot terminated"]
    assert sim.report(500).empty


def test_bootstrap_then_handle() -> None:
    """The first decide on UNKNOWN emits UNKNOWN->DORMANT, then handles the message."""
    d = seed.decide(seed.initial_state("a"), germinate("a"), Context(message_id="x"))
    first = d.events[0]
    assert isinstance(first, pb.LifecycleTransition) and first.to_stage == S.SEED_STAGE_DORMANT
    assert [getattr(e, "seq", None) for e in d.events] == [1, 2]
    assert d.outgoing[0].message.order_id == "x.0"  # type: ignore[attr-defined]


def test_execution_failure_in_active_stage_culls() -> None:
    """An ack with ok=False for a stage-entry order culls the seed."""
    sim = _germinated(SeedSim())
    sim.auto = False
    sim.advance(400)
    request = sim.outbox[-1]
    assert isinstance(request, pb.GateRequest)
    sim.send(gates.decide(gates.initial_state(), request, Context()).events[0])
    assert sim.state.stage == S.SEED_STAGE_BLENDING
    sim.send(sim.ack_for(sim.orders[-1], ok=False))
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED


def test_digest_changes_with_state() -> None:
    """Digests are stable for equal states and differ after an event."""
    a = seed.initial_state("x")
    assert seed.digest(a) == seed.digest(seed.initial_state("x"))
    assert seed.digest(a) != seed.digest(replace(a, seq=1))
    assert seed.from_plain(seed.to_plain(replace(a, params=(("w", 2.0),)))).params == (("w", 2.0),)
