"""Exactly once across rewinds: a Redis writer without keys rewinds an inbox's consumer group
(XGROUP SETID) and every earlier command is delivered again; none is decided a second time."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from actors.client import Outcome
from actors.eventlog import read_verified
from actors.hosting.inbox import FRAME
from bus import Bus, parse_id
from contracts import KasminaConfig, KeyRing, Signer, kinds, streams
from kasmina.commands.status import collect
from leyline import pb
from scenarios.chaos.harness import read_log
from scenarios.cluster import Cluster, running_cluster

SLOT = "l0.s0"
pytestmark = pytest.mark.anyio


async def _cull(cl: Cluster) -> Outcome:
    outcome = await cl.client.command(SLOT, "cull", wait=True, timeout_s=20)
    assert isinstance(outcome, Outcome)
    return outcome


async def _refusals(bus: Bus, cl: Cluster) -> list[int]:
    log = await read_log(bus, cl.run, cl.ring)
    return [m.seq for _, k, m, _ in log if k == "lifecycle.refused" and m.slot == SLOT]


async def _three_culls(bus: Bus, cl: Cluster) -> list[int]:
    """Three culls of the dormant slot (three refusals); the refusals' sequence numbers."""
    for _ in range(3):
        await _cull(cl)
    return await _refusals(bus, cl)


async def _rewind_then_cull(client: Any, cl: Cluster) -> list[int]:
    """The slot's group rewound to 0 (the earlier commands delivered again), then one more cull,
    read after them; the refusals' sequence numbers."""
    await client.xgroup_setid(streams.inbox(cl.run, "seed", SLOT), f"actor:seed:{SLOT}", "0")
    await _cull(cl)
    return await _refusals(cl.bus, cl)


async def test_a_rewound_group_decides_nothing_twice(bus: Bus, run_id: str) -> None:
    """After XGROUP SETID 0 on the slot's inbox, the three earlier commands come back and are
    acked without effect; the next command is the only new event."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no consumer groups to rewind from outside")
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=KeyRing.generate()) as cl:
        before = await _three_culls(bus, cl)
        after = await _rewind_then_cull(client, cl)  # the rewound entries were handled first
        assert after == [*before, before[-1] + 1]
        info = await bus.info(streams.inbox(run_id, "seed", SLOT))
        assert info.groups[0].pending == 0


async def _forget(client: Any, run: str) -> int:
    """Delete every nonce and commit-marker key of ``run``: what a writer without keys can do."""
    doomed = [
        key
        async for key in client.scan_iter(match=f"*{run}*")
        if b"nonce:" in key or b":processed:" in key
    ]
    if doomed:
        await client.delete(*doomed)
    return len(doomed)


async def test_a_writer_who_deletes_nonces_and_markers_gets_nothing_decided_twice(
    bus: Bus, run_id: str
) -> None:
    """The nonce and commit-marker keys deleted, then the group rewound: the live actor still
    knows the three earlier commands (its own memory of what it committed) and decides none of
    them again; the next command is the only new event."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no keys to delete from outside")
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=KeyRing.generate()) as cl:
        before = await _three_culls(bus, cl)
        assert await _forget(client, run_id) >= 6  # three nonces, three markers at least
        assert await _rewind_then_cull(client, cl) == [*before, before[-1] + 1]


async def test_a_restarted_actor_remembers_committed_ids_from_the_log(
    bus: Bus, run_id: str
) -> None:
    """After a restart the actor re-learns the ids it committed from its events' causes: with
    the nonces and markers deleted and the group rewound, nothing is decided twice."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no keys to delete from outside")
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        before = await _three_culls(bus, cl)
    await _forget(client, run_id)
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        assert await _rewind_then_cull(client, cl) == [*before, before[-1] + 1]


async def test_an_operators_pause_is_not_applied_again_after_its_resume_is_deleted(
    bus: Bus, run_id: str
) -> None:
    """Pause, then resume; a writer without keys deletes the resume's inbox entry (XDEL) and
    rewinds the group: the pause comes back alone and is acked without effect, so the slot stays
    resumed and the log holds no second pause."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no consumer groups to rewind from outside")
    inbox = streams.inbox(run_id, "seed", SLOT)
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=KeyRing.generate()) as cl:
        for action in ("pause", "resume"):
            outcome = await cl.client.command(SLOT, action, wait=True, timeout_s=20)
            assert isinstance(outcome, Outcome) and outcome.result == "accepted", outcome
        events = len(await cl.events())
        entries = await bus.range(inbox, "-", "+")
        assert len(entries) == 2
        assert await client.xdel(inbox, entries[-1].id) == 1  # the resume's entry
        await client.xgroup_setid(inbox, f"actor:seed:{SLOT}", "0")
        await _cull(cl)  # read after the rewound pause
        log = [k for _, k, _ in await cl.events()][events:]
        assert [k for k in log if k.startswith("lifecycle.")] == ["lifecycle.refused"]  # the cull
        assert (await cl.state()).seeds[SLOT].paused is False


async def _outcomes_of(bus: Bus, cl: Cluster, command_ids: set[str]) -> list[tuple[str, str]]:
    """``(command_id, result)`` of every verified outcome record naming one of ``command_ids``."""
    records, _ = await read_verified(bus, streams.outcomes(cl.run), cl.ring)
    return [
        (m.command_id, pb.OutcomeResult.Name(m.result))
        for _, kind, m in records
        if kind == "command.outcome" and m.command_id in command_ids
    ]


async def test_a_rewound_group_past_the_clock_tolerance_records_no_stale_rejection(
    bus: Bus, run_id: str
) -> None:
    """Commands decided once, then delivered again by a rewound group after the clock tolerance
    has passed: they are refused as stale no more than they are decided again; acked without a
    rejection record or a second outcome (the commit markers still name them). A copy of one
    written into the inbox now is a stale frame, and recorded as one."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no consumer groups to rewind from outside")
    config = KasminaConfig.model_validate({"security": {"clock_tolerance_s": 1.0}})
    async with running_cluster(
        bus, run=run_id, slots=[SLOT], ring=KeyRing.generate(), config=config
    ) as cl:
        sent: set[str] = set()
        for action in ("pause", "resume", "cull"):
            outcome = await cl.client.command(SLOT, action, wait=True, timeout_s=20)
            assert isinstance(outcome, Outcome), outcome
            sent.add(outcome.command_id)
        first = sorted(await _outcomes_of(bus, cl, sent))
        assert len(first) == 3
        aged = time.time() + 2.5  # the three commands age past the 1 s tolerance
        while time.time() < aged:
            await anyio.sleep(0.1)
        await client.xgroup_setid(streams.inbox(cl.run, "seed", SLOT), f"actor:seed:{SLOT}", "0")
        await _cull(cl)  # read after the rewound commands
        assert sorted(await _outcomes_of(bus, cl, sent)) == first
        status = await collect(bus, run_id, cl.ring)
        assert "stale" not in status["rejected"], status["rejected"]
        assert (await cl.state()).seeds[SLOT].paused is False
        inbox = streams.inbox(cl.run, "seed", SLOT)
        pause = (await bus.range(inbox, "-", "+"))[0]  # the pause's own entry
        await bus.publish(inbox, dict(pause.fields))
        await _cull(cl)
        status = await collect(bus, run_id, cl.ring)
        assert status["rejected"].get("stale") == 1, status["rejected"]
        assert (await cl.state()).seeds[SLOT].paused is False


@pytest.mark.parametrize("ahead", ["max", "a day"])
async def test_a_group_moved_past_its_stream_is_moved_back_and_the_command_decided(
    bus: Bus, run_id: str, ahead: str
) -> None:
    """XGROUP SETID to a future id would hold back every later entry (lag read as 0). The
    actor's watch finds its group past the stream's end, moves it back to the last entry it
    decided, and notes it: the command sent meanwhile is decided once, status counts the move."""
    from kasmina.commands.status import collect

    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no consumer groups to move from outside")
    inbox, group = streams.inbox(run_id, "seed", SLOT), f"actor:seed:{SLOT}"
    # reads block 4.5 s (Redis caps a BLOCK at half the 10 s socket timeout): the command must be
    # decided well before that, so the watch has woken the read blocked since the group moved
    config = KasminaConfig.model_validate({"bus": {"block_ms": 4_500}})
    async with running_cluster(
        bus, run=run_id, slots=[SLOT], ring=KeyRing.generate(), config=config
    ) as cl:
        before = await _three_culls(bus, cl)
        last = (await bus.info(inbox)).last_id
        future = (
            "18446744073709551615-0"
            if ahead == "max"
            else f"{int(last.split('-')[0]) + 86_400_000}-0"
        )
        await client.xgroup_setid(inbox, group, future)
        command_id, entry = await cl.client.send(SLOT, "cull")
        (shell,) = [s for s in cl.shells if s.group == group]
        # (its heartbeat loop may have found it first: then this call finds nothing to do)
        assert await shell.housekeeping.watch_group() in (last, None)  # the last entry decided
        assert await shell.housekeeping.watch_group() is None  # once moved, nothing to do
        info = await bus.info(inbox)
        assert parse_id(info.groups[0].last_delivered) <= parse_id(info.last_id)
        with anyio.fail_after(3):
            outcome = await cl.client.wait(command_id, timeout_s=20, entry=entry)
        assert outcome.result == "refused"  # decided (a dormant slot refuses a cull)
        assert await _refusals(bus, cl) == [*before, before[-1] + 1]
        status = await collect(bus, run_id, cl.ring)
        assert status["groups_moved"] == 1


async def test_a_rejection_delivered_again_by_a_rewound_group_is_counted_once(
    bus: Bus, run_id: str
) -> None:
    """A forged command is rejected; the group is rewound and the same entry rejected again (a
    second record: nothing marks a rejected entry as decided); `status` counts it once."""
    client = getattr(bus, "client", None)
    if client is None:
        pytest.skip("the memory bus has no consumer groups to rewind from outside")
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=KeyRing.generate()) as cl:
        inbox = streams.inbox(cl.run, "seed", SLOT)
        forged = pb.SeedCommand(slot=SLOT)
        forged.cull.SetInParent()
        frame = Signer(KeyRing.generate(), "mallory").seal(kinds.SEED_COMMAND, forged, stream=inbox)
        entry_id = await bus.publish(inbox, {FRAME: frame, "kind": kinds.SEED_COMMAND.encode()})
        await _cull(cl)  # read after the forged entry
        first = (await collect(bus, run_id, cl.ring))["rejected"]
        assert first.get("unknown_key") == 1, first  # (beside the culls' own refusals)
        await client.xgroup_setid(inbox, f"actor:seed:{SLOT}", "0")
        await _cull(cl)
        records, _ = await read_verified(bus, streams.rejected(cl.run), cl.ring)
        assert [m.entry_id for _, _, m in records].count(entry_id) == 2
        after = (await collect(bus, run_id, cl.ring))["rejected"]
        assert after.get("unknown_key") == 1, after
