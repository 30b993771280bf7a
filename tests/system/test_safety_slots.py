"""The SafetyActor counts every slot of the run, not only those that misbehaved: step reports
reach it, so one seed taken out in a two-slot run opens one breaker of two and stops nothing."""

from __future__ import annotations

import pytest

from bus import Bus
from contracts import KasminaConfig, streams
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

A, B = "l0.s0", "l0.s1"
V = pb.VerdictAction
pytestmark = pytest.mark.anyio


async def test_one_failed_seed_of_two_slots_culls_it_and_stops_nothing(
    bus: Bus, run_id: str
) -> None:
    """After a few reported steps the SafetyActor has registered both slots; a SEED_FAILED
    signal for one culls it (breaker open) and raises no emergency stop (1 of 2 open, fewer
    than the 2 the default needs)."""
    sim = SimRuntime([A, B], report_every=2, barrier_frequency=5)
    config = KasminaConfig()
    async with running_cluster(bus, run=run_id, slots=[A, B], runtimes=[sim], config=config) as cl:
        await cl.drive(0, 6)
        registered = {
            m.slot
            for _, k, m in await cl.events()
            if k == "safety.verdict" and m.action == V.VERDICT_CLOSE
        }
        assert registered == {A, B}
        signal = pb.SafetySignal(
            slot=A, kind=pb.SAFETY_SIGNAL_SEED_FAILED, value=1.0, step=6, detail="seed raised"
        )
        await cl.client.publish(streams.inbox(run_id, "safety"), signal)
        await cl.settle()
        verdicts = [(m.slot, m.action) for _, k, m in await cl.events() if k == "safety.verdict"]
        assert (A, V.VERDICT_CULL) in verdicts
        assert not [v for v in verdicts if v[1] == V.VERDICT_EMERGENCY_STOP]
