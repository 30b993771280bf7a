"""An awaited order whose step passes without an acknowledgement is sent again.

An order sent while no trainer reads the execution inbox reaches it late and is refused as stale;
without a second copy the slot would wait forever. Expected values come from the configuration
below (barrier frequency 5: an order sent at step s is due at the first multiple of 5 after s + 5,
and is resent once reports are two intervals past that step).
"""

from __future__ import annotations

from cores_harness import SeedSim, command, germinate

from contracts.config import BarrierConfig, KasminaConfig
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
