"""An awaited order whose step passes without an acknowledgement is sent again.

An order sent while no trainer reads the execution inbox reaches it late and is refused as stale;
without a second copy the slot would wait forever. Expected values come from the configuration
below (barrier frequency 5: an order sent at step s is due at the first multiple of 5 after s + 5,
and is resent once reports are two intervals past that step).
"""

from __future__ import annotations

from cores_harness import SeedSim, command, germinate

from actors.core import next_boundary
from contracts.config import BarrierConfig, KasminaConfig, LifecycleConfig
from leyline import pb

S = pb.SeedLifecycleStage
FREQ = 5


def _sim() -> SeedSim:
    return SeedSim(config=KasminaConfig(barrier=BarrierConfig(frequency=FREQ)), auto=False)


def test_a_germination_nobody_acknowledged_is_resent_with_its_id_at_the_next_boundary() -> None:
    """Germinate at step 0 (due at 10), no ack: reports up to step 20 send nothing; the report at
    step 21 sends the same order id again, due at 30; later reports wait for that new step."""
    sim = _sim()
    sim.send(germinate(sim.slot))
    (first,) = sim.orders
    assert first.apply_at_step == 10 and first.stage == S.SEED_STAGE_GERMINATED
    for step in (0, 5, 10, 15, 20):
        sim.report(step, {})
    assert len(sim.orders) == 1
    sim.report(21, {})
    assert len(sim.orders) == 2
    again = sim.orders[1]
    assert again.order_id == first.order_id and again.apply_at_step == 30
    assert again.germinate == first.germinate and again.wants_evidence
    sim.report(40, {})  # 40 = 30 + 2 * 5: not yet past the resent order's window
    assert len(sim.orders) == 2
    sim.report(41, {})
    assert [o.apply_at_step for o in sim.orders] == [10, 30, 50]


def test_the_ack_of_the_resent_order_ends_the_wait_and_nothing_more_is_sent() -> None:
    """Acking the resent copy moves the slot on (G0 passes into TRAINING); later reports send
    no further copies of the germination."""
    sim = _sim()
    sim.send(germinate(sim.slot))
    sim.report(40, {})
    sim.auto = True
    sim.send(sim.ack_for(sim.orders[-1]))
    assert sim.state.stage == S.SEED_STAGE_TRAINING and sim.state.pending_order == ""
    germinations = [o for o in sim.orders if o.stage == S.SEED_STAGE_GERMINATED]
    assert len(germinations) == 2
    sim.auto = False
    sim.report(41, {})
    sim.report(90, {})
    assert [o for o in sim.orders if o.stage == S.SEED_STAGE_GERMINATED] == germinations


def test_a_pause_order_is_resent_with_its_pause_flag() -> None:
    """An unacknowledged pause order comes again with ``paused`` set and the same id."""
    sim = _sim()
    sim.auto = True
    sim.send(germinate(sim.slot))
    assert sim.state.stage == S.SEED_STAGE_TRAINING
    sim.auto = False
    sim.send(command(sim.slot, "pause"))
    pause = sim.orders[-1]
    assert pause.paused
    sim.report(sim.step + pause.apply_at_step + 3 * FREQ, {})
    again = sim.orders[-1]
    assert again is not pause and again.order_id == pause.order_id and again.paused


def test_a_gate_wait_is_never_resent() -> None:
    """A slot waiting for a gate result (not for execution) sends no order on reports."""
    sim = _sim()
    sim.auto = True
    sim.send(germinate(sim.slot))
    sim.auto = False
    n = len(sim.orders)
    sim.report(10_000)  # past the TRAINING budget: the exit gate is requested, not answered
    assert sim.state.awaiting is not None and not sim.state.awaiting.acked
    sim.report(20_000)
    assert len(sim.orders) == n


def _to_blending(sim: SeedSim) -> None:
    """Reports (gate requests answered, orders not) until G1 passes and BLENDING is ordered."""
    for step in range(sim.step + FREQ, sim.step + 1000, FREQ):
        for out in sim.report(step).outgoing:
            if isinstance(out.message, pb.GateRequest):
                sim._route(out.message)
        if sim.orders[-1].stage == S.SEED_STAGE_BLENDING:
            return
    raise AssertionError("BLENDING was never ordered")


def _retry_ack(order: pb.ExecutionOrder) -> pb.ExecutionAck:
    """A data-parallel rank's refusal: not every rank held the order at its step."""
    return pb.ExecutionAck(
        order_id=order.order_id, slot=order.slot, stage=order.stage, ok=False, retry=True,
        applied_at_step=order.apply_at_step, error="not held by every rank",
    )  # fmt: skip


def test_an_order_not_held_by_every_rank_is_sent_again_under_a_new_id_then_applies() -> None:
    """The BLENDING order refused with ``retry`` (one rank's bus was cut) neither culls the
    seed nor records a refusal: the same order comes again under a new id, one interval on, then
    two; its ack moves the slot on as the first one's would have."""
    sim = _sim()
    sim.auto = True
    sim.send(germinate(sim.slot))
    sim.auto = False
    _to_blending(sim)
    blend = sim.orders[-1]
    assert blend.stage == S.SEED_STAGE_BLENDING and blend.attempt == 0
    sim.send(_retry_ack(blend))
    again = sim.orders[-1]
    assert again.order_id != blend.order_id and again.attempt == 1
    assert (again.stage, again.slot) == (blend.stage, blend.slot)
    assert again.apply_at_step == next_boundary(sim.step + FREQ, FREQ)
    sim.send(_retry_ack(again))
    third = sim.orders[-1]
    assert third.attempt == 2 and third.apply_at_step == next_boundary(sim.step + 2 * FREQ, FREQ)
    assert sim.state.stage == S.SEED_STAGE_BLENDING
    assert not any(isinstance(e, pb.LifecycleRefused) for e in sim.events)
    sim.send(sim.ack_for(third))
    assert sim.state.pending_order == "" and sim.state.stage == S.SEED_STAGE_BLENDING


def test_an_order_refused_for_retry_too_often_counts_as_failed() -> None:
    """After ``lifecycle.order_retries`` copies, a further ``retry`` refusal of a stage order
    culls the seed as an execution failure does."""
    config = KasminaConfig(
        barrier=BarrierConfig(frequency=FREQ), lifecycle=LifecycleConfig(order_retries=2)
    )
    sim = SeedSim(config=config, auto=True)
    sim.send(germinate(sim.slot))
    sim.auto = False
    _to_blending(sim)
    for _ in range(2):
        sim.send(_retry_ack(sim.orders[-1]))
    assert sim.orders[-1].attempt == 2 and sim.state.stage == S.SEED_STAGE_BLENDING
    moved = sim.send(_retry_ack(sim.orders[-1])).events
    culled = [e for e in moved if isinstance(e, pb.LifecycleTransition)]
    assert culled and culled[0].to_stage == S.SEED_STAGE_CULLED
    assert "not held by every rank" in culled[0].cause


def test_orders_sent_again_space_out_to_eight_intervals() -> None:
    """Copies of an order not every rank held come 1, 2, 4, then every 8 barrier intervals on,
    so a rank back from a cut is in step again within 8 intervals."""
    sim = _sim()
    sim.auto = True
    sim.send(germinate(sim.slot))
    sim.auto = False
    _to_blending(sim)
    gaps = []
    for _ in range(6):
        sim.send(_retry_ack(sim.orders[-1]))
        gaps.append(sim.orders[-1].apply_at_step - next_boundary(sim.step, FREQ))
    assert gaps == [FREQ * k for k in (1, 2, 4, 8, 8, 8)]
