"""A whole run with one key per role: every record the actors and the trainer's side write verifies
under the role table, so status and the log speak of no forgery on a genuine run."""

from __future__ import annotations

from collections import Counter

from tests_system_helpers import small_config, walk_until

from actors.eventlog import BadEntry, read_log
from actors.shell import FRAME
from bus import Bus
from contracts import Verifier, streams
from kasmina.commands.status import collect
from leyline import pb
from scenarios.cluster import role_rings, running_cluster
from scenarios.sim import SimRuntime

SLOT = "l1.s0"


async def test_a_run_with_a_key_per_role_writes_only_records_that_verify(
    bus: Bus, run_id: str
) -> None:
    """Actors, the ExecutionActor and a controller each sign with their role's key: a seed walked
    to FOSSILIZED with barrier votes, and rejections by a SeedActor and by the ExecutionActor,
    leave no entry outside the inboxes that fails verification; status counts none."""
    ring, signing = role_rings()
    sim = SimRuntime([SLOT], report_every=5, barrier_frequency=5, blend_steps=20)
    async with running_cluster(
        bus, run=run_id, slots=[SLOT], runtimes=[sim], ring=ring, config=small_config(),
        signing=signing,
    ) as cl:  # fmt: skip
        await cl.step(0)
        await cl.settle()
        await bus.publish(streams.inbox(run_id, "seed", SLOT), {FRAME: b"\x93junk"})
        await bus.publish(streams.inbox(run_id, "execution", "0"), {FRAME: b"\x93junk"})
        await cl.client.command(SLOT, "germinate", blueprint="residual_mlp")
        await walk_until(cl, SLOT, pb.SEED_STAGE_FOSSILIZED)
        bad: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        for stream in await bus.streams(streams.prefix(run_id) + "*"):
            if ":inbox:" in stream:
                continue
            async for rec in read_log(bus, stream, Verifier(ring, replay=True)):
                if isinstance(rec, BadEntry):
                    bad[f"{stream}: {rec.reason.value}"] += 1
                else:
                    kinds[rec.kind] += 1
        status = await collect(bus, run_id, ring)
    assert bad == Counter()
    assert kinds["barrier.vote"] > 0 and kinds["rejection"] >= 2
    assert status["unverified_events"] == 0 and "unverified_record" not in status["rejected"]
    assert status["rejected"]["bad_frame"] == 2
