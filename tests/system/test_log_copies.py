"""Copies of genuine events appended to the log (no key needed) are folded by no actor and no
reader: every shell's rebuild sets them aside, `status` counts them quarantined."""

from __future__ import annotations

import pytest

from actors.eventlog import read_verified
from bus import Bus
from contracts import KeyRing, Reason, streams
from kasmina.commands.status import collect
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

SLOT = "l0.s0"
COPIED = (b"gate.result", b"barrier.propose", b"barrier.commit", b"barrier.vote")
pytestmark = pytest.mark.anyio


async def test_a_copied_event_of_any_actor_changes_no_state_on_rebuild(
    bus: Bus, run_id: str
) -> None:
    """Byte-for-byte copies of a gate result and of barrier events at the log's tail: after a
    rebuild (a restart, a failover) every actor's state is what it was, the copies are
    quarantined, and the log reads as doctored (`replayed`) rather than clean."""
    ring = KeyRing.generate()
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    async with running_cluster(bus, run=run_id, slots=[SLOT], runtimes=[sim], ring=ring) as cl:
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        for step in range(0, 40):
            await cl.step(step)
            await cl.settle()
        log = await bus.range(streams.events(run_id))
        firsts = {}
        for entry in log:
            firsts.setdefault(entry.fields.get("kind"), entry)
        copies = [firsts[k] for k in COPIED if k in firsts]
        assert {e.fields["kind"] for e in copies} >= {b"gate.result", b"barrier.commit"}
        before = {s.logic.name: s.logic.digests() for s in cl.supervisor.shells}
        for entry in copies:  # the attacker needs no key: a genuine frame, appended again
            await bus.publish(streams.events(run_id), dict(entry.fields))
        for shell in cl.supervisor.shells:
            await shell.rebuild()
        after = {s.logic.name: s.logic.digests() for s in cl.supervisor.shells}
        assert after == before
        held = sum(len(s.quarantined) for s in cl.supervisor.shells)
        assert held >= len(copies)  # each shell that reads a copy sets it aside
        _, bad = await read_verified(bus, streams.events(run_id), ring)
        assert [b["reason"] for b in bad] == [Reason.REPLAYED.value] * len(copies)
        status = await collect(bus, run_id, ring)
        assert status["quarantined"] == len(copies) and status["unverified_events"] == 0
