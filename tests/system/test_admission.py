"""Admission per inbox: a flooded inbox sheds its excess as ``overloaded`` (one record per shed
run, exact counts), rejections of a flood are recorded in aggregate, legitimate commands keep
being decided (the bystander slot's all of them), nothing is decided twice and the flood changes
no state."""

from __future__ import annotations

import anyio
import pytest

from actors.client import KasminaClient, Outcome, build_command
from actors.eventlog import LogRecord, read_log
from actors.hosting.admission import SHED_OUTCOMES, Admission
from actors.hosting.rejection import Rejections
from actors.shell import FRAME, ActorShell
from bus import Append, Bus, Fence, Fenced, Shedding, parse_id
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds, streams
from contracts.ids import new_id
from leyline import pb
from scenarios.cluster import running_cluster
from scenarios.sim import SimRuntime

FLOODED, BYSTANDER = "a", "b"
BATCH, BOUND, VERIFY, FLOOD = 64, 100, 8, 400


def _config() -> KasminaConfig:
    return KasminaConfig.load(
        env={},
        overrides={
            "bus.batch": BATCH,
            "bus.admission_backlog": BOUND,
            "bus.admission_verify": VERIFY,
            "bus.aggregate_from": 8,
            "safety.reject_storm_count": 100_000,  # no storm signal: no SafetyActor here
        },
    )


async def _records(bus: Bus, run: str, ring: KeyRing) -> list[pb.Rejection]:
    out = []
    async for record in read_log(bus, streams.rejected(run), Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord) and isinstance(record.message, pb.Rejection)
        out.append(record.message)
    return out


async def _outcomes(bus: Bus, run: str, ring: KeyRing, command_id: str) -> list[pb.CommandOutcome]:
    out = []
    async for record in read_log(bus, streams.outcomes(run), Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord)
        message = record.message
        if isinstance(message, pb.CommandOutcome) and message.command_id == command_id:
            out.append(message)
    return out


async def test_a_flood_is_shed_as_overloaded_and_legitimate_commands_go_through(
    bus: Bus, run_id: str
) -> None:
    """400 garbage entries ahead of the actor: the excess over the backlog bound is shed in
    aggregate (exact count; inside Redis, one run, where the bus sheds there), a shed command's
    sender sees `overloaded` and can resend it, the newest entries and the bystander slot's
    commands are all decided once, the flood changes nothing."""
    ring = KeyRing.generate()
    signer = Signer(ring, "tamiyo")
    inbox = streams.inbox(run_id, "seed", FLOODED)

    def command(action: str) -> tuple[str, bytes]:
        mid = new_id()
        cmd = build_command(FLOODED, action)
        return mid, signer.seal("seed.command", cmd, stream=inbox, msg_id=mid)

    shed_id, shed_frame = command("pause")
    kept_id, kept_frame = command("pause")
    flood = [{FRAME: b"\x00garbage\xff"} if i % 2 else {"junk": b"x"} for i in range(FLOOD)]
    flood.insert(100, {FRAME: shed_frame})  # past the first batch, far from the newest: shed
    flood.append({FRAME: kept_frame})  # among the newest BOUND entries: decided
    for entry in flood:
        await bus.publish(inbox, entry)
    async with running_cluster(
        bus, run=run_id, slots=[FLOODED, BYSTANDER], ring=ring, config=_config(), actors=["seed"]
    ) as cl:
        bystander = [
            await cl.client.command(BYSTANDER, "pause" if i % 2 == 0 else "resume", wait=True)
            for i in range(4)
        ]
        await cl.settle()
        (shell,) = [s for s in cl.shells if s.inbox == inbox]
        assert isinstance(shell, ActorShell)
        records = await _records(bus, run_id, ring)
        overloaded = [r for r in records if r.reason_code == "overloaded"]
        shed = sum(r.count for r in overloaded)
        if isinstance(bus, Shedding):
            # the first batch is decided whole; Redis sheds every undelivered entry but the
            # newest BOUND - BATCH in one run: the backlog decided is exactly BOUND entries
            assert len(overloaded) == 1 and overloaded[0].count == 402 - 64 - 36
            assert shed == len(flood) - BOUND == shell.shed
        else:
            # every shed run but the last keeps VERIFY entries; the last sheds the exact excess,
            # so that the BOUND newest entries are all decided
            assert shed == len(flood) - BOUND - VERIFY * (len(overloaded) - 1) == shell.shed
        assert shell.rejected["overloaded"] == shed and len(overloaded) < shed / 10
        assert all(
            not r.verified and parse_id(r.entry_id) < parse_id(r.last_entry_id) for r in overloaded
        )
        garbage = [r for r in records if r.reason_code == "bad_frame"]
        assert sum(max(1, r.count) for r in garbage) == shell.rejected["bad_frame"]
        assert shell.rejected["bad_frame"] + shed == len(flood) - 1  # each entry counted once
        assert len(garbage) < shell.rejected["bad_frame"] / 4  # aggregated per batch

        (seen,) = await _outcomes(bus, run_id, ring, shed_id)
        assert seen.result == pb.OUTCOME_REJECTED and seen.reason == "overloaded"
        assert not seen.verified
        kept = await _outcomes(bus, run_id, ring, kept_id)
        assert [o.result for o in kept] == [pb.OUTCOME_ACCEPTED]
        assert all(isinstance(o, Outcome) and o.result == "accepted" for o in bystander)

        mark = await cl.client.outcomes_mark()
        await bus.publish(inbox, {FRAME: shed_frame})  # never admitted: it may be sent again
        again = await cl.client.wait(shed_id, after=mark)
        assert again.message.reason != "overloaded" and again.result != "rejected"
        state = await cl.state()
    assert state.seeds[FLOODED].paused and state.seeds[FLOODED].stage == pb.SEED_STAGE_DORMANT
    assert not state.seeds[BYSTANDER].paused


async def test_a_shed_command_crowded_out_of_the_named_ids_still_learns_it_was_shed(
    bus: Bus, run_id: str
) -> None:
    """20 commands signed with a key of the attacker's own right before a legitimate one, all in
    the shed part: the legitimate sender's wait finds the signed `overloaded` run covering its
    entry and returns `overloaded` (where the store sheds, the actor named only the attacker's
    first 16 ids)."""
    ring = KeyRing.generate()
    inbox = streams.inbox(run_id, "seed", FLOODED)
    client = KasminaClient(bus, run_id, Signer(ring, "tamiyo"), Verifier(ring))
    attacker = Signer(KeyRing.generate(), "tamiyo")
    claims = [
        {FRAME: attacker.seal("seed.command", build_command(FLOODED, "cull"), stream=inbox)}
        for _ in range(SHED_OUTCOMES + 4)
    ]
    mid = new_id()
    mine = Signer(ring, "tamiyo").seal(
        "seed.command", build_command(FLOODED, "pause"), stream=inbox, msg_id=mid
    )
    junk = [{"junk": b"x"} for _ in range(FLOOD)]
    flood = [*junk[:110], *claims, {FRAME: mine}, *junk[110:]]  # the command at 130
    mark = await client.outcomes_mark()
    ids = await bus.publish_many([Append(inbox, f) for f in flood])
    async with running_cluster(
        bus, run=run_id, slots=[FLOODED], ring=ring, config=_config(), actors=["seed"]
    ) as cl:
        with anyio.fail_after(30):
            seen = await client.wait(mid, after=mark, entry=(inbox, ids[130]))
        assert (seen.result, seen.message.reason) == ("rejected", "overloaded")
        if isinstance(bus, Shedding):  # one run of 302 entries: its 16 names are the attacker's
            assert await _outcomes(bus, run_id, ring, mid) == []
        await cl.settle()
        state = await cl.state()
    assert FLOODED not in state.seeds or not state.seeds[FLOODED].paused  # never applied


async def test_nothing_is_shed_within_the_bound(bus: Bus, run_id: str) -> None:
    """A backlog at the bound, full batches included, is decided entry by entry: no
    `overloaded`, every command gets its own decision."""
    ring = KeyRing.generate()
    signer = Signer(ring, "tamiyo")
    inbox = streams.inbox(run_id, "seed", FLOODED)
    ids = []
    for i in range(BOUND):
        action = "pause" if i % 2 == 0 else "resume"
        ids.append(new_id())
        cmd = build_command(FLOODED, action)
        frame = signer.seal("seed.command", cmd, stream=inbox, msg_id=ids[-1])
        await bus.publish(inbox, {FRAME: frame})
    async with running_cluster(
        bus, run=run_id, slots=[FLOODED], ring=ring, config=_config(), actors=["seed"]
    ) as cl:
        await cl.settle()
        (shell,) = cl.shells
        assert shell.shed == 0 and "overloaded" not in shell.rejected
        with anyio.fail_after(20):
            for command_id in ids[-3:]:
                (outcome,) = await _outcomes(bus, run_id, ring, command_id)
                assert outcome.result == pb.OUTCOME_ACCEPTED
        assert shell.processed >= BOUND


async def test_a_flood_of_the_execution_inbox_is_shed_and_recorded_in_aggregate(
    bus: Bus, run_id: str
) -> None:
    """Garbage in a trainer's execution inbox beyond the backlog bound: the excess shed as
    `overloaded`, the rest counted under its reason, each entry once and in aggregate records; a
    checkpoint request among the oldest is decided, never shed; a genuine order sent after the
    flood still applied."""
    ring = KeyRing.generate()
    sim = SimRuntime([FLOODED], report_every=5, barrier_frequency=5)
    inbox = streams.inbox(run_id, "execution", "0")
    request = Signer(ring, "safety").seal(
        kinds.CHECKPOINT_REQUEST, pb.CheckpointRequest(reason="flooded", step=0), stream=inbox
    )
    flood: list[dict[str, bytes]] = [{"junk": b"x"} for _ in range(FLOOD)]
    flood.insert(10, {FRAME: request})  # among the oldest: inside the first shed cut
    async with running_cluster(
        bus, run=run_id, slots=[FLOODED], runtimes=[sim], ring=ring, config=_config()
    ) as cl:
        await cl.step(0)
        await cl.settle()
        (actor,) = cl.executions
        before = await _records(bus, run_id, ring)
        await bus.publish_many([Append(inbox, fields) for fields in flood])
        await cl.client.command(FLOODED, "germinate", blueprint="residual_mlp")
        for step in range(1, 22):  # the order applies at a later boundary
            await cl.step(step)
            await cl.settle()
        records = (await _records(bus, run_id, ring))[len(before) :]
        shed = actor.admission.shed
        assert shed > 0 and actor.rejected["overloaded"] == shed
        assert actor.rejected["bad_frame"] + shed == FLOOD
        mine = [r for r in records if r.actor == "execution:0"]
        assert sum(max(1, r.count) for r in mine) == FLOOD and len(mine) <= FLOOD // 8
        assert sim.checkpoint_requests == [("flooded", 0)]
        assert sim.applied_orders  # the germination's order reached the runtime


async def test_a_shed_inside_redis_fenced_off_counts_nothing(bus: Bus, run_id: str) -> None:
    """A host whose lease is gone cannot shed inside Redis: Fenced, nothing written, and neither
    the overloaded count nor the shed count keeps the run it tried to record."""
    if not isinstance(bus, Shedding):
        pytest.skip("the in-memory bus sheds in the actor")
    config = _config()
    inbox, group = streams.inbox(run_id, "seed", FLOODED), "actor:seed:" + FLOODED
    await bus.ensure_group(inbox, group)
    await bus.publish_many([Append(inbox, {"junk": b"x"}) for _ in range(FLOOD)])
    batch = await bus.read(inbox, group, "c", count=BATCH, block_ms=0)
    lease = streams.prefix(run_id) + "lease:test"
    await bus.set_value(lease, b"someone-else", ttl_ms=60_000)
    rejections = Rejections(run_id, "seed:" + FLOODED, Signer(KeyRing.generate(), "seed"))
    admission = Admission(bus, inbox, group, config, rejections, shed_inside=True)
    before = await bus.info(inbox)
    with pytest.raises(Fenced):
        await admission.cut(batch, Fence(lease, "me", 60_000))
    assert (rejections.counts["overloaded"], admission.shed) == (0, 0)
    assert await bus.info(inbox) == before
    assert await bus.range(streams.rejected(run_id)) == []
