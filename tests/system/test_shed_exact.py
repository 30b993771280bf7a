"""Shed runs are recorded exactly: a shed taken back (its record never written) leaves neither
the counters nor the reject-storm window changed, and a record covers exactly the ids it shed."""

from __future__ import annotations

import pytest

from actors.eventlog import LogRecord, read_log
from actors.hosting.admission import Admission
from actors.hosting.rejection import Rejections
from actors.shell import FRAME, ActorShell
from bus import Append, Bus, Fence, Fenced, Handled, Shedding
from contracts import KasminaConfig, KeyRing, Reason, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

BATCH, BOUND, VERIFY, FLOOD = 64, 100, 8, 400
SHED = FLOOD - BATCH - (BOUND - BATCH)  # what one shed inside the store names: 300


def _config(**overrides: object) -> KasminaConfig:
    return KasminaConfig.load(
        env={},
        overrides={
            "bus.batch": BATCH,
            "bus.admission_backlog": BOUND,
            "bus.admission_verify": VERIFY,
            "bus.aggregate_from": 8,
            "safety.reject_storm_count": 100_000,  # no storm signal: no SafetyActor here
            **overrides,
        },
    )


def _signals(appends: list[Append], run: str) -> list[Append]:
    return [a for a in appends if a.stream == streams.inbox(run, "safety")]


@pytest.mark.parametrize("threshold", [SHED - 50, SHED + 700])
async def test_a_shed_taken_back_leaves_the_storm_window_as_it_was(
    bus: Bus, run_id: str, threshold: int
) -> None:
    """A fenced-off shed of 300 entries adds nothing to the storm window: neither a quiet period
    from the signal it would have raised (threshold 250) nor its count (threshold 1000); the next
    ``threshold`` real rejections raise no storm and one more does."""
    if not isinstance(bus, Shedding):
        pytest.skip("the in-memory bus sheds in the actor: its records ride on the commit")
    config = _config(
        **{"safety.reject_storm_count": threshold, "safety.reject_storm_window_s": 600}
    )
    inbox, group = streams.inbox(run_id, "seed", "a"), "actor:seed:a"
    await bus.ensure_group(inbox, group)
    await bus.publish_many([Append(inbox, {"junk": b"x"}) for _ in range(FLOOD)])
    batch = await bus.read(inbox, group, "c", count=BATCH, block_ms=0)
    lease = streams.prefix(run_id) + "lease:test"
    await bus.set_value(lease, b"someone-else", ttl_ms=60_000)
    ring = KeyRing.generate()
    rejections = Rejections(run_id, "seed:a", Signer(ring, "seed:a"), config.safety)
    admission = Admission(bus, inbox, group, config, rejections, shed_inside=True)
    with pytest.raises(Fenced):
        await admission.cut(batch, Fence(lease, "me", 60_000))
    assert rejections.counts["overloaded"] == 0
    span = (inbox, batch[0].id, batch[-1].id, threshold)
    quiet = rejections.record_range(Reason.BAD_FRAME, "test", span)
    assert _signals(quiet, run_id) == []
    storm = rejections.record(batch[0], Reason.BAD_FRAME, "one more")
    assert len(_signals(storm, run_id)) == 1


async def _overloaded(bus: Bus, run: str, ring: KeyRing, actor: str) -> list[pb.Rejection]:
    out = []
    async for record in read_log(bus, streams.rejected(run), Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord) and isinstance(record.message, pb.Rejection)
        if record.message.reason_code == "overloaded" and record.message.actor == actor:
            out.append(record.message)
    return out


async def _covered(bus: Bus, record: pb.Rejection) -> list[str]:
    """The ids of the record's stream that its range names."""
    entries = await bus.range(record.stream, record.entry_id, record.last_entry_id)
    return [e.id for e in entries]


async def test_a_shed_record_never_covers_ids_between_re_read_entries(
    bus: Bus, run_id: str
) -> None:
    """A full re-read of the actor's pending entries with acked ones between them, over a
    backlog past the bound: no `overloaded` record's range names an entry it did not shed (its
    count is exactly the entries its range covers, none of them acked before), and every
    entry is counted once."""
    ring = KeyRing.generate()
    inbox, group = streams.inbox(run_id, "seed", "a"), "actor:seed:a"
    await bus.ensure_group(inbox, group)
    await bus.publish_many([Append(inbox, {"junk": b"x"}) for _ in range(FLOOD)])
    delivered = [e for _ in range(2) for e in await bus.read(inbox, group, "seed:a", count=BATCH)]
    acked = delivered[30:BATCH]  # the pending re-read returns 0..29 and 64..97: a gap
    await bus.commit([Handled(e, group, ()) for e in acked])
    async with running_cluster(
        bus, run=run_id, slots=["a"], ring=ring, config=_config(), actors=["seed"]
    ) as cl:
        await cl.settle()
        (shell,) = cl.shells
        assert isinstance(shell, ActorShell)
        records = await _overloaded(bus, run_id, ring, "seed:a")
        assert records and sum(r.count for r in records) == shell.shed
        for record in records:
            covered = await _covered(bus, record)
            assert len(covered) == record.count
            assert not {e.id for e in acked} & set(covered)
        assert shell.rejected["bad_frame"] + shell.shed == FLOOD - len(acked)


async def test_an_execution_shed_record_never_covers_an_entry_it_kept(
    bus: Bus, run_id: str
) -> None:
    """The ExecutionActor keeps a checkpoint request found among the entries it sheds: the
    shed ones on either side are recorded as separate runs, and no record's range names the
    request's entry."""
    ring = KeyRing.generate()
    sim = SimRuntime(["a"], report_every=5, barrier_frequency=5)
    inbox = streams.inbox(run_id, "execution", "0")
    request = Signer(ring, "safety").seal(
        kinds.CHECKPOINT_REQUEST, pb.CheckpointRequest(reason="flooded", step=0), stream=inbox
    )
    flood: list[dict[str, bytes]] = [{"junk": b"x"} for _ in range(FLOOD)]
    flood.insert(10, {FRAME: request})  # among the oldest: inside the first shed cut
    async with running_cluster(
        bus, run=run_id, slots=["a"], runtimes=[sim], ring=ring, config=_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        (actor,) = cl.executions
        ids = await bus.publish_many([Append(inbox, fields) for fields in flood])
        for step in range(1, 4):
            await cl.step(step)
            await cl.settle()
        records = await _overloaded(bus, run_id, ring, "execution:0")
        assert records and sum(r.count for r in records) == actor.admission.shed
        for record in records:
            covered = await _covered(bus, record)
            assert len(covered) == record.count and ids[10] not in covered
        assert sim.checkpoint_requests == [("flooded", 0)]


async def test_a_shed_command_delivered_again_by_a_rewind_is_not_decided(
    bus: Bus, run_id: str
) -> None:
    """A genuine command shed in a flood (its sender told `overloaded`) and delivered again
    after a Redis writer rewinds the group to just before it: still fresh, no nonce and no
    commit marker, yet it is acked without a decision, so what its sender was told stays true
    (and a resend by that sender is applied once)."""
    if not isinstance(bus, Shedding):
        pytest.skip("the in-memory bus sheds in the actor: the rewind would shed it again")
    from actors.client import KasminaClient, build_command

    ring = KeyRing.generate()
    inbox, group = streams.inbox(run_id, "seed", "a"), "actor:seed:a"
    await bus.ensure_group(inbox, group)
    client = KasminaClient(bus, run_id, Signer(ring, "tamiyo"), Verifier(ring))
    command = Signer(ring, "tamiyo").seal(
        kinds.SEED_COMMAND, build_command("a", "pause"), stream=inbox
    )
    flood: list[dict[str, bytes]] = [{"junk": b"x"} for _ in range(FLOOD)]
    flood[200] = {FRAME: command, "kind": b"seed.command"}  # in the middle: shed in the store
    ids = await bus.publish_many([Append(inbox, fields) for fields in flood])
    command_id = Verifier(ring).open(command, stream=inbox).id
    async with running_cluster(
        bus, run=run_id, slots=["a"], ring=ring, config=_config(), actors=["seed"]
    ) as cl:
        await cl.settle()
        told = await client.wait(command_id, timeout_s=10, entry=(inbox, ids[200]))
        assert (told.result, told.message.reason) == ("rejected", "overloaded")
        await bus.set_group_id(inbox, group, ids[199])  # the writer's rewind
        await bus.publish(inbox, {"junk": b"y"})
        await cl.settle()
        records = []
        async for record in read_log(bus, streams.outcomes(run_id), Verifier(ring, replay=True)):
            if isinstance(record, LogRecord) and record.message.command_id == command_id:
                records.append(pb.OutcomeResult.Name(record.message.result))
        assert records == ["OUTCOME_REJECTED"]  # never decided
