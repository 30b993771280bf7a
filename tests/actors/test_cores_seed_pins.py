"""The SeedActor core at its limits: step budgets, embargo, reset retries, strikes, G4 evidence.

Every expected value is written here from docs/design.md §2/§3 and the configuration below, never read
back from the core; limits are tested one step before, at, and (where it matters) after.
"""

from __future__ import annotations

import pytest
from cores_harness import PASSING, SeedSim, command, germinate

from actors.core import Message
from contracts import evidence as ev
from contracts.config import BarrierConfig, KasminaConfig, LifecycleConfig
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate
V = pb.VerdictAction

TRAINING, BLENDING, SHADOWING, PROBATIONARY = 10, 20, 30, 40
EMBARGO, RETRY = 50, 7


def _config() -> KasminaConfig:
    return KasminaConfig(
        lifecycle=LifecycleConfig(
            training_steps=TRAINING,
            blend_steps=BLENDING,
            shadowing_steps=SHADOWING,
            probationary_steps=PROBATIONARY,
            embargo_steps=EMBARGO,
            reset_retry_steps=RETRY,
        ),
        barrier=BarrierConfig(frequency=1),
    )


def _sim() -> SeedSim:
    return SeedSim(config=_config())


def _germinate(sim: SeedSim, blend_steps: int = 0) -> None:
    sim.report(1)
    cmd = germinate(sim.slot)
    cmd.germinate.blend_steps = blend_steps
    sim.send(cmd)
    assert sim.state.stage == S.SEED_STAGE_TRAINING


def _entered(sim: SeedSim, stage: int) -> int:
    """The step a stage's clock starts: its order's apply_at_step (execution applies it there)."""
    return next(o.apply_at_step for o in reversed(sim.orders) if o.stage == stage)


def _requests(decision_log: list[tuple[str, Message, object]]) -> list[pb.GateRequest]:
    out = []
    for _, _, decision in decision_log:
        for o in decision.outgoing:  # type: ignore[attr-defined]
            if isinstance(o.message, pb.GateRequest):
                out.append(o.message)
    return out


def _transitions(sim: SeedSim) -> list[tuple[int, int]]:
    return [(e.from_stage, e.to_stage) for e in sim.events if isinstance(e, pb.LifecycleTransition)]


def _walk_to(sim: SeedSim, stage: int) -> None:
    """Step budgets one by one until ``stage`` (every gate passes)."""
    for _ in range(6):
        if sim.state.stage == stage:
            return
        sim.advance(100)
    assert sim.state.stage == stage


@pytest.mark.parametrize(
    ("stage", "budget", "gate", "nxt"),
    [
        (S.SEED_STAGE_TRAINING, TRAINING, G.SEED_GATE_G1_GRADIENT_HEALTH, S.SEED_STAGE_BLENDING),
        (S.SEED_STAGE_BLENDING, BLENDING, G.SEED_GATE_G2_STABILITY, S.SEED_STAGE_SHADOWING),
        (S.SEED_STAGE_SHADOWING, SHADOWING, G.SEED_GATE_G3_INTERFACE, S.SEED_STAGE_PROBATIONARY),
        (
            S.SEED_STAGE_PROBATIONARY,
            PROBATIONARY,
            G.SEED_GATE_G4_SYSTEM_IMPACT,
            S.SEED_STAGE_FOSSILIZED,
        ),
    ],
)
def test_stage_budget_is_met_exactly_at_its_step(
    stage: int, budget: int, gate: int, nxt: int
) -> None:
    """A timed stage asks for its exit gate at entered + budget, not one step earlier."""
    sim = _sim()
    _germinate(sim)
    _walk_to(sim, stage)
    start = _entered(sim, stage)
    before = len(sim.log)
    sim.report(start + budget - 1)
    assert _requests(sim.log[before:]) == [] and sim.state.stage == stage
    sim.report(start + budget)
    asked = _requests(sim.log[before:])
    assert [r.gate for r in asked] == [gate]
    assert asked[0].step == start + budget and asked[0].stage == stage
    assert sim.state.stage == nxt


def test_blend_steps_of_the_germination_override_the_configured_ramp() -> None:
    """Germinate(blend_steps=5): G2 is asked 5 steps into BLENDING (the configured ramp is 20)."""
    sim = _sim()
    _germinate(sim, blend_steps=5)
    _walk_to(sim, S.SEED_STAGE_BLENDING)
    start = _entered(sim, S.SEED_STAGE_BLENDING)
    blend_order = next(o for o in sim.orders if o.stage == S.SEED_STAGE_GERMINATED)
    assert blend_order.germinate.blend_steps == 5  # execution ramps alpha over the same 5 steps
    sim.report(start + 4)
    assert sim.state.stage == S.SEED_STAGE_BLENDING
    sim.report(start + 5)
    assert sim.state.stage == S.SEED_STAGE_SHADOWING


def test_embargo_ends_exactly_embargo_steps_after_the_cull() -> None:
    """A slot culled at step c stays EMBARGOED through c + embargo - 1 and resets at c + embargo."""
    sim = _sim()
    _germinate(sim)
    sim.report(30)
    sim.send(command(sim.slot, "cull"))
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    sim.report(30 + EMBARGO - 1)
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED
    assert not any(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders)
    sim.auto = False
    sim.report(30 + EMBARGO)
    assert sim.state.stage == S.SEED_STAGE_RESETTING
    reset = sim.orders[-1]
    assert reset.stage == S.SEED_STAGE_RESETTING and reset.wants_evidence
    assert reset.evidence_for == G.SEED_GATE_G5_RESET


def _resetting(sim: SeedSim) -> pb.ExecutionOrder:
    """Cull at 30, report the end of the embargo; returns the reset order (not yet acked)."""
    _germinate(sim)
    sim.report(30)
    sim.send(command(sim.slot, "cull"))
    sim.auto = False
    sim.report(30 + EMBARGO)
    order = sim.orders[-1]
    assert order.stage == S.SEED_STAGE_RESETTING
    return order


def test_failed_g5_retries_exactly_reset_retry_steps_later() -> None:
    """G5 failing at step r: no new reset order at r + retry - 1, one at r + retry."""
    sim = _sim()
    order = _resetting(sim)
    sim.evidence[G.SEED_GATE_G5_RESET] = dict(PASSING[G.SEED_GATE_G5_RESET], hooks_released=0.0)
    sim.auto = True
    r = sim.step
    sim.send(sim.ack_for(order))
    assert sim.state.stage == S.SEED_STAGE_RESETTING
    refused = sim.events[-1]
    assert isinstance(refused, pb.LifecycleRefused) and refused.request == "reset"
    assert "hooks_released" in refused.reason
    sim.auto = False
    resets = sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders)
    sim.report(r + RETRY - 1)
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets
    sim.report(r + RETRY)
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets + 1
    sim.report(r + RETRY + 1)  # awaiting the retry's ack: no third order
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets + 1


def test_failed_reset_order_retries_exactly_reset_retry_steps_later() -> None:
    """Execution failing the reset at step r: refused 'reset', re-ordered at r + retry exactly."""
    sim = _sim()
    order = _resetting(sim)
    r = sim.step
    d = sim.send(sim.ack_for(order, ok=False))
    refusals = [e for e in d.events if isinstance(e, pb.LifecycleRefused)]
    assert [e.request for e in refusals] == ["reset"]
    assert "execution failed" in refusals[0].reason
    resets = sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders)
    sim.report(r + RETRY - 1)
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets
    sim.report(r + RETRY)
    assert sum(o.stage == S.SEED_STAGE_RESETTING for o in sim.orders) == resets + 1
    sim.auto = True
    sim.send(sim.ack_for(sim.orders[-1]))
    assert sim.state.stage == S.SEED_STAGE_DORMANT


def test_a_new_seed_does_not_inherit_the_strikes_of_the_slots_earlier_seed() -> None:
    """Strikes against a culled seed are not the next seed's: its germination resets the count
    (an explicit ``strikes = 0`` in the event, so a replay folds the same), and its G4 evidence
    counts its own strikes only."""
    sim = _sim()
    order = _resetting(sim)
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=2))
    assert sim.state.strikes == 2
    sim.auto = True
    sim.send(sim.ack_for(order))
    assert sim.state.stage == S.SEED_STAGE_DORMANT
    sim.report(sim.step + 1)
    d = sim.send(germinate(sim.slot))
    reset = [e for e in d.events if isinstance(e, pb.LifecycleProgress) and e.HasField("germinate")]
    assert len(reset) == 1 and reset[0].HasField("strikes") and reset[0].strikes == 0
    assert sim.state.stage == S.SEED_STAGE_TRAINING and sim.state.strikes == 0
    _walk_to(sim, S.SEED_STAGE_PROBATIONARY)
    assert dict(_g4_request(sim).evidence.metrics)[ev.OPEN_STRIKES] == 0.0


def _g4_request(sim: SeedSim) -> pb.GateRequest:
    sim.auto = False
    start = _entered(sim, S.SEED_STAGE_PROBATIONARY)
    d = sim.report(start + PROBATIONARY)
    asked = [o.message for o in d.outgoing if isinstance(o.message, pb.GateRequest)]
    assert len(asked) == 1 and asked[0].gate == G.SEED_GATE_G4_SYSTEM_IMPACT
    return asked[0]


def test_g4_evidence_carries_the_baseline_the_accuracy_and_the_open_strikes() -> None:
    """G4 is asked with the pre-germination accuracy, the current one and the slot's strikes."""
    sim = _sim()
    sim.val_acc = 0.625
    _germinate(sim)
    sim.val_acc = 0.75
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=2))
    _walk_to(sim, S.SEED_STAGE_PROBATIONARY)
    req = _g4_request(sim)
    metrics = dict(req.evidence.metrics)
    assert metrics[ev.BASELINE_ACC] == 0.625
    assert metrics[ev.VAL_ACC] == 0.75
    assert metrics[ev.OPEN_STRIKES] == 2.0


def test_g4_evidence_leaves_out_an_unmeasured_accuracy() -> None:
    """With no accuracy measured (0 or negative) G4 gets no baseline/val_acc, and 0 strikes."""
    sim = _sim()
    sim.val_acc = -1.0
    _germinate(sim)
    sim.val_acc = 0.0
    _walk_to(sim, S.SEED_STAGE_PROBATIONARY)
    req = _g4_request(sim)
    metrics = dict(req.evidence.metrics)
    assert ev.BASELINE_ACC not in metrics and ev.VAL_ACC not in metrics
    assert metrics[ev.OPEN_STRIKES] == 0.0


def test_execution_measured_g4_evidence_wins_over_the_slots_own() -> None:
    """Metrics the step report carries for G4 are kept; the slot only fills in what is absent."""
    sim = _sim()
    sim.val_acc = 0.625
    _germinate(sim)
    _walk_to(sim, S.SEED_STAGE_PROBATIONARY)
    sim.evidence[G.SEED_GATE_G4_SYSTEM_IMPACT] = {
        ev.CF_ACC_ON: 0.9,
        ev.CF_ACC_OFF: 0.8,
        ev.BASELINE_ACC: 0.5,
        ev.VAL_ACC: 0.25,
        ev.OPEN_STRIKES: 4.0,
    }
    metrics = dict(_g4_request(sim).evidence.metrics)
    assert (metrics[ev.BASELINE_ACC], metrics[ev.VAL_ACC], metrics[ev.OPEN_STRIKES]) == (
        0.5,
        0.25,
        4.0,
    )


@pytest.mark.parametrize("action", [V.VERDICT_STRIKE, V.VERDICT_HALF_OPEN, V.VERDICT_CLOSE])
def test_a_verdict_that_does_not_stop_records_its_strike_count(action: int) -> None:
    """STRIKE / HALF_OPEN / CLOSE verdicts only record the strike count they carry."""
    sim = _sim()
    _germinate(sim)
    d = sim.send(pb.SafetyVerdict(slot=sim.slot, action=action, strikes=2))  # type: ignore[arg-type]
    assert [e.strikes for e in d.events if isinstance(e, pb.LifecycleProgress)] == [2]
    assert not any(isinstance(e, pb.LifecycleTransition | pb.LifecycleRefused) for e in d.events)
    assert sim.state.stage == S.SEED_STAGE_TRAINING and sim.state.strikes == 2


def test_a_cull_verdict_records_its_strike_count_and_culls() -> None:
    """A breaker-open verdict with 3 strikes records 3 strikes and culls (cause names the breaker)."""
    sim = _sim()
    _germinate(sim)
    d = sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_CULL, strikes=3, reason="nan"))
    assert [
        e.strikes for e in d.events if isinstance(e, pb.LifecycleProgress) and e.HasField("strikes")
    ] == [3]
    moves = [e for e in d.events if isinstance(e, pb.LifecycleTransition)]
    assert [(m.from_stage, m.to_stage) for m in moves] == [
        (S.SEED_STAGE_TRAINING, S.SEED_STAGE_CULLED),
        (S.SEED_STAGE_CULLED, S.SEED_STAGE_EMBARGOED),
    ]
    assert moves[0].cause == "circuit breaker open: nan"
    assert sim.state.strikes == 3


def test_a_cull_verdict_with_the_known_strike_count_adds_no_bookkeeping() -> None:
    """A cull verdict repeating the slot's strike count culls without a strikes event."""
    sim = _sim()
    _germinate(sim)
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=3))
    d = sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_CULL, strikes=3))
    assert not any(isinstance(e, pb.LifecycleProgress) and e.HasField("strikes") for e in d.events)
    assert sim.state.stage == S.SEED_STAGE_EMBARGOED and sim.state.strikes == 3


def test_run_wide_emergency_stop_culls_and_keeps_the_strike_count() -> None:
    """An emergency stop for the whole run (slot "") culls an active slot; strikes unchanged."""
    sim = _sim()
    _germinate(sim)
    sim.send(pb.SafetyVerdict(slot=sim.slot, action=V.VERDICT_STRIKE, strikes=1))
    d = sim.send(pb.SafetyVerdict(slot="", action=V.VERDICT_EMERGENCY_STOP, strikes=0))
    moves = [e for e in d.events if isinstance(e, pb.LifecycleTransition)]
    assert moves[0].to_stage == S.SEED_STAGE_CULLED and moves[0].cause == "emergency stop"
    assert sim.state.strikes == 1


@pytest.mark.parametrize("action", [V.VERDICT_CULL, V.VERDICT_STRIKE])
def test_a_slotless_verdict_other_than_emergency_stop_is_refused(action: int) -> None:
    """Only the emergency stop may name no slot; anything else slot-less is unknown_slot."""
    sim = _sim()
    _germinate(sim)
    d = sim.send(pb.SafetyVerdict(slot="", action=action, strikes=3))  # type: ignore[arg-type]
    assert [e.reason for e in d.events if isinstance(e, pb.LifecycleRefused)] == ["unknown_slot"]
    assert len(d.events) == 1 and sim.state.stage == S.SEED_STAGE_TRAINING


def test_stale_and_repeated_step_reports_change_nothing() -> None:
    """A report not newer than the last one (another rank's copy) is a no-op."""
    sim = _sim()
    _germinate(sim)
    sim.report(7)
    assert sim.report(7).events == () and sim.report(6).events == ()
    assert len(sim.report(8).events) == 1


def test_a_negative_accuracy_is_recorded_as_zero() -> None:
    """A step report's negative val_accuracy (no measurement) is folded as 0."""
    sim = _sim()
    sim.val_acc = -0.5
    d = sim.report(1)
    progress = [e for e in d.events if isinstance(e, pb.LifecycleProgress)]
    assert [e.val_acc for e in progress] == [0.0]


def test_transitions_of_a_full_walk_follow_the_design_table() -> None:
    """The walk with every gate passing is docs/design.md §2's main line, written out."""
    sim = _sim()
    _germinate(sim)
    _walk_to(sim, S.SEED_STAGE_FOSSILIZED)
    assert _transitions(sim) == [
        (S.SEED_STAGE_UNKNOWN, S.SEED_STAGE_DORMANT),
        (S.SEED_STAGE_DORMANT, S.SEED_STAGE_GERMINATED),
        (S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING),
        (S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING),
        (S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING),
        (S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY),
        (S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED),
    ]


@pytest.mark.parametrize("paused_for", [0, 5])
def test_a_pause_moves_the_stage_budget_by_exactly_its_length(paused_for: int) -> None:
    """Paused for d steps (0: paused and resumed at one step), TRAINING asks G1 at
    entered + budget + d, not a step earlier."""
    sim = _sim()
    _germinate(sim)
    start = _entered(sim, S.SEED_STAGE_TRAINING)
    sim.report(start + 3)
    sim.send(command(sim.slot, "pause"))
    assert sim.state.paused
    if paused_for:
        sim.report(start + 3 + paused_for)
    sim.send(command(sim.slot, "resume"))
    assert not sim.state.paused
    sim.report(start + TRAINING + paused_for - 1)
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    sim.report(start + TRAINING + paused_for)
    assert sim.state.stage == S.SEED_STAGE_BLENDING
