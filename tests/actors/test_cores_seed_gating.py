"""Which orders wait for a barrier commit: the moves that change every rank's forward."""

from __future__ import annotations

from cores_harness import SeedSim, command, germinate

from contracts import evidence as ev
from contracts.config import KasminaConfig
from leyline import pb

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate
V = pb.VerdictAction
CFG = KasminaConfig.load(env={}, overrides={"barrier.frequency": 10})


def _in(stage: int) -> SeedSim:
    sim = SeedSim(config=CFG)
    sim.report(1)
    sim.send(germinate(sim.slot))
    while sim.state.stage != stage:
        sim.advance(400)
    return sim


def test_stage_moves_into_the_forward_wait_for_the_next_barrier_commit() -> None:
    """BLENDING, SHADOWING, PROBATIONARY and FOSSILIZED orders are gated on the barrier one
    period before their apply step; germination and the TRAINING order are not."""
    sim = _in(S.SEED_STAGE_FOSSILIZED)
    by_stage = {o.stage: o for o in sim.orders}
    for stage in (
        S.SEED_STAGE_BLENDING,
        S.SEED_STAGE_SHADOWING,
        S.SEED_STAGE_PROBATIONARY,
        S.SEED_STAGE_FOSSILIZED,
    ):
        order = by_stage[stage]
        assert order.barrier_gated, stage
        assert order.after_barrier == order.apply_at_step - 10
    assert not by_stage[S.SEED_STAGE_GERMINATED].barrier_gated
    assert not by_stage[S.SEED_STAGE_TRAINING].barrier_gated


def test_a_commanded_cull_of_a_seed_in_the_forward_is_gated() -> None:
    """Culling a BLENDING seed by command waits for a barrier commit; culling a TRAINING seed
    (alpha 0, not in the forward) does not."""
    blending = _in(S.SEED_STAGE_BLENDING)
    blending.send(command(blending.slot, "cull"))
    assert blending.orders[-1].stage == S.SEED_STAGE_CULLED and blending.orders[-1].barrier_gated
    training = _in(S.SEED_STAGE_TRAINING)
    training.send(command(training.slot, "cull"))
    assert training.orders[-1].stage == S.SEED_STAGE_CULLED
    assert not training.orders[-1].barrier_gated


def test_urgent_culls_and_in_stage_orders_never_wait() -> None:
    """An emergency stop, a breaker's cull and an in-stage pause apply on their step, gated on
    no barrier (they must not wait on the ranks)."""
    stop = _in(S.SEED_STAGE_SHADOWING)
    stop.send(command(stop.slot, "emergency_stop"))
    assert stop.orders[-1].stage == S.SEED_STAGE_CULLED and not stop.orders[-1].barrier_gated
    breaker = _in(S.SEED_STAGE_BLENDING)
    breaker.send(pb.SafetyVerdict(slot=breaker.slot, action=V.VERDICT_CULL, strikes=3))
    assert breaker.orders[-1].stage == S.SEED_STAGE_CULLED
    assert not breaker.orders[-1].barrier_gated
    paused = _in(S.SEED_STAGE_BLENDING)
    paused.send(command(paused.slot, "pause"))
    assert paused.orders[-1].paused and not paused.orders[-1].barrier_gated


def test_a_cull_on_a_failed_gate_of_a_seed_in_the_forward_is_gated() -> None:
    """design.md: a seed in the forward culled on a failed gate (G2 failing in BLENDING) is
    dropped on a barrier commit."""
    sim = _in(S.SEED_STAGE_BLENDING)
    sim.evidence = dict(sim.evidence)
    sim.evidence[G.SEED_GATE_G2_STABILITY] = {
        **sim.evidence[G.SEED_GATE_G2_STABILITY],
        ev.NONFINITE_COUNT: 3.0,
    }
    for _ in range(4):
        if sim.state.stage == S.SEED_STAGE_EMBARGOED:
            break
        sim.advance(400)
    cull = sim.orders[-1]
    assert cull.stage == S.SEED_STAGE_CULLED and cull.barrier_gated
    assert cull.after_barrier == cull.apply_at_step - 10
