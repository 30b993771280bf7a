"""A trainer key's step report with a step no run reaches is refused, and the slot keeps taking
commands (before, a germinate after it built an order step that did not fit the wire and the
SeedActor crash-looped)."""

from __future__ import annotations

import anyio
import pytest

from actors.eventlog import read_verified
from bus import Bus
from contracts import streams
from leyline import pb
from scenarios.cluster import running_cluster

SLOT = "l0.s0"
pytestmark = pytest.mark.anyio


async def test_a_report_at_the_end_of_time_is_refused_and_the_slot_still_serves(
    bus: Bus, run_id: str
) -> None:
    """StepReport(step=2**64-1) is rejected as invalid, the slot's step is untouched, and a
    germinate after it is decided (accepted, waiting for a trainer) instead of crashing the
    SeedActor."""
    async with running_cluster(bus, run=run_id, slots=[SLOT]) as cl:
        report = pb.StepReport(rank=0, step=2**64 - 1)
        report.slots.add(slot=SLOT)
        await cl.client.publish(streams.inbox(run_id, "seed", SLOT), report)
        germ = await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        mine: list[pb.CommandOutcome] = []
        with anyio.fail_after(30):  # no trainer: the germination waits, its outcome says so
            while not mine:
                records, _ = await read_verified(bus, streams.outcomes(run_id), cl.ring)
                mine = [m for _, _, m in records if m.command_id == germ]
                await anyio.sleep(0.02)
        assert [(m.result, m.awaiting) for m in mine] == [(pb.OUTCOME_ACCEPTED, "g0_evidence")]
        rejected = [e.fields.get("reason") for e in await bus.range(streams.rejected(run_id))]
        assert b"invalid" in rejected
        shell = next(s for s in cl.shells if s.logic.name == f"seed:{SLOT}")
        assert shell.logic.now_step < 2**53  # type: ignore[attr-defined]
