"""Hostile input into the inboxes changes no state and is counted under its reason code."""

from __future__ import annotations

import math

import msgpack
import pytest
from tests_system_helpers import small_config, walk_until

from actors.shell import FRAME
from bus import Bus
from contracts import KeyRing, Signer, streams
from kasmina.commands.status import collect
from leyline import pb
from scenarios.cluster import Cluster, running_cluster
from scenarios.sim import SimRuntime

SLOT = "l1.s0"


async def _digests(cl: Cluster) -> dict[tuple[str, str], bytes]:
    state = await cl.state()
    return {k: v for k, v in state.digests().items() if k[0] != "telemetry"}


async def test_hostile_inputs_change_nothing_and_are_counted(bus: Bus, run_id: str) -> None:
    """Garbage, a re-sent envelope, forgery, staleness, NaN, unknown slot and an illegal command are rejected."""
    run = run_id
    ring = KeyRing.generate()
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    async with running_cluster(
        bus, run=run, slots=[SLOT], runtimes=[sim], ring=ring, config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        before_stage = await cl.stage(SLOT)
        before = await _digests(cl)
        seed_inbox = streams.inbox(run, "seed", SLOT)
        signer = Signer(ring, "tamiyo")
        good = signer.seal(
            "seed.command", pb.SeedCommand(slot=SLOT, cull=pb.Cull()), stream=seed_inbox
        )

        # 1 garbage bytes, 2 a missing frame field
        await bus.publish(seed_inbox, {FRAME: b"\x00garbage\xff"})
        await bus.publish(seed_inbox, {"x": b"1"})
        # 3 forged: a valid frame re-signed with another key under the same key id
        forged_ring = KeyRing.from_json(
            {**ring.to_json(), "keys": [{**ring.to_json()["keys"][0], "secret": "QUFB" * 11}]}
        )
        await bus.publish(
            seed_inbox,
            {
                FRAME: Signer(forged_ring, "mallory").seal(
                    "seed.command", pb.SeedCommand(slot=SLOT, cull=pb.Cull()), stream=seed_inbox
                )
            },
        )
        # 4 stale: signed two minutes ago
        stale = Signer(ring, "tamiyo", clock=lambda: 0).seal(
            "seed.command",
            pb.SeedCommand(slot=SLOT, cull=pb.Cull()),
            ts_ns=10**18,
            stream=seed_inbox,
        )
        await bus.publish(seed_inbox, {FRAME: stale})
        # 5 NaN metrics in a step report
        report = pb.StepReport(rank=0, step=3, loss=math.nan)
        await bus.publish(
            seed_inbox, {FRAME: signer.seal("step.report", report, stream=seed_inbox)}
        )
        # 6 a command for another slot sent to this slot's inbox
        await bus.publish(
            seed_inbox,
            {
                FRAME: signer.seal(
                    "seed.command",
                    pb.SeedCommand(slot="elsewhere", cull=pb.Cull()),
                    stream=seed_inbox,
                )
            },
        )
        # 7 an illegal transition (cull of a DORMANT slot), then 8 the same envelope re-sent
        await bus.publish(seed_inbox, {FRAME: good})
        await bus.publish(seed_inbox, {FRAME: good})
        # 9 a message of a kind the seed actor does not take
        await bus.publish(
            seed_inbox,
            {FRAME: signer.seal("barrier.vote", pb.BarrierVote(rank=0), stream=seed_inbox)},
        )
        # 10 truncated msgpack
        await bus.publish(seed_inbox, {FRAME: msgpack.packb([2, "seed.command"])})
        await cl.settle()

        assert await cl.stage(SLOT) == before_stage
        after = await _digests(cl)
        assert after[("gate", "")] == before[("gate", "")]
        assert after[("safety", "")] == before[("safety", "")]
        status = await collect(bus, run, ring)
        rejected = status["rejected"]
        assert rejected == {
            "bad_frame": 3,
            "bad_signature": 1,
            "stale": 1,
            "non_finite": 1,
            "unknown_slot": 1,
            "illegal_transition": 1,
            "replayed": 1,
            "unexpected_kind": 1,
        }
        # the actor kept running: a legal command afterwards still works
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        for step in range(1, 40):
            await cl.step(step)
            await cl.settle()
            if await cl.stage(SLOT) == pb.SEED_STAGE_TRAINING:
                break
        assert await cl.stage(SLOT) == pb.SEED_STAGE_TRAINING
        slots = {s["slot"]: s["stage"] for s in status["slots"]}
        assert slots == {SLOT: "DORMANT"}


async def test_a_field_named_in_bytes_that_are_not_utf8_is_rejected_and_read(
    bus: Bus, run_id: str
) -> None:
    """An inbox entry whose field name is not UTF-8 is rejected as a bad frame and acked (the
    actor keeps serving); the same entry in the event log is an unverified event, and status
    still reads the run."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the in-memory bus takes text field names only")
    ring = KeyRing.generate()
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5)
    async with running_cluster(
        bus, run=run_id, slots=[SLOT], runtimes=[sim], ring=ring, config=small_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        await client.xadd(streams.inbox(run_id, "seed", SLOT), {b"\xff": b"x", b"m\xfe": b"y"})
        await client.xadd(streams.events(run_id), {b"\xff\xfe": b"z"})
        await cl.settle()
        status = await collect(bus, run_id, ring)
        assert status["rejected"] == {"bad_frame": 1}
        assert status["unverified_events"] == 1
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        await walk_until(cl, SLOT, pb.SEED_STAGE_TRAINING, limit=39)
