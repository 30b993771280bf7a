"""Housekeeping of a serving actor: signed heartbeats with its counters, acked inbox entries
trimmed past the retention, state digests after a change, the core's timer sent to its own
inbox, and the loop that runs them only while the host owns its actor."""

from __future__ import annotations

import time

import anyio
import pytest

from actors.eventlog import LogRecord, read_log
from actors.hosting import FRAME
from actors.hosting.housekeeping import Housekeeping, digest_appends, every, trim_inbox
from bus import Bus, BusClosed, BusUnavailable, parse_id
from bus.testing import eventually
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds
from leyline import pb

pytestmark = pytest.mark.anyio


def _keeper(bus: Bus, run: str, ring: KeyRing, **kw: object) -> Housekeeping:
    config = KasminaConfig.load(env={}, overrides={"bus.inbox_retention_s": 1.5})
    return Housekeeping(
        bus, run, f"kasmina:{{{run}}}:inbox:gate", Signer(ring, "gate"), config, name="gate",
        process="p7", heartbeat_s=1.0, counters=lambda: (12, {"invalid": 3}), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def _records(bus: Bus, stream: str, ring: KeyRing) -> list[LogRecord]:
    out = []
    async for record in read_log(bus, stream, Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord)
        out.append(record)
    return out


async def test_a_beat_is_signed_and_carries_the_actors_counters(bus: Bus, run_id: str) -> None:
    """A heartbeat on the run's heartbeat stream names the actor and process, carries what the
    counters say, when the host started and when it beat."""
    ring = KeyRing.generate()
    before = time.time_ns()
    keeper = _keeper(bus, run_id, ring)
    await keeper.beat()
    (record,) = await _records(bus, f"kasmina:{{{run_id}}}:heartbeats", ring)
    beat = record.message
    assert isinstance(beat, pb.Heartbeat) and record.envelope.sender == "gate"
    assert (beat.actor, beat.process, beat.processed, dict(beat.rejected)) == (
        "gate", "p7", 12, {"invalid": 3},
    )  # fmt: skip
    assert before <= beat.started_ns <= beat.ts_ns <= time.time_ns()


async def test_entries_older_than_the_retention_are_trimmed(bus: Bus, run_id: str) -> None:
    """With a retention of 1.5 s, an inbox entry is kept until 1.5 s after it was added and
    trimmed from 1 ms later on; a clock before the epoch's first 1.5 s trims nothing."""
    ring = KeyRing.generate()
    keeper = _keeper(bus, run_id, ring)
    ids = [await bus.publish(keeper.inbox, {"x": str(i).encode()}) for i in range(3)]
    first, last = parse_id(ids[0])[0], parse_id(ids[-1])[0]
    assert await keeper.trim_inbox(now_ms=0) == 0
    assert await keeper.trim_inbox(now_ms=first + 1500) == 0
    assert await trim_inbox(bus, keeper.inbox, 1.5, now_ms=last + 1501) == 3
    assert await bus.range(keeper.inbox) == []


async def test_the_trim_turn_adds_up_what_it_trimmed(bus: Bus, run_id: str) -> None:
    """The periodic trim uses the wall clock and keeps a total of the entries trimmed."""
    ring = KeyRing.generate()
    config = KasminaConfig.load(env={}, overrides={"bus.inbox_retention_s": 0.0})
    keeper = Housekeeping(
        bus, run_id, f"kasmina:{{{run_id}}}:inbox:gate", Signer(ring, "gate"), config,
        name="gate", process="", heartbeat_s=1.0, counters=lambda: (0, {}),
    )  # fmt: skip
    for i in range(2):
        await bus.publish(keeper.inbox, {"x": str(i).encode()})
    before = len(await bus.range(keeper.inbox))
    while (await bus.range(keeper.inbox))[-1:] and keeper.trimmed < before:
        await keeper._trim()  # the same clock millisecond as the last entry trims up to it
    assert keeper.trimmed == before == 2


def test_digests_are_one_signed_event_each_after_their_cause() -> None:
    """Each (actor, key) digest becomes one state.digest event on the events stream, caused by
    and naming the event after which it was taken."""
    ring = KeyRing.generate()
    events = "kasmina:{r-hk}:events"
    digests = {("seed", "l0.s0"): b"\x01", ("gate", ""): b"\x02"}
    appends = digest_appends(events, Signer(ring, "seed"), digests, "m-9")
    assert [a.stream for a in appends] == [events, events]
    assert [a.fields["kind"] for a in appends] == [b"state.digest"] * 2
    verifier = Verifier(ring, replay=True)
    opened = [verifier.open(a.fields[FRAME], stream=events) for a in appends]
    assert [e.causation_id for e in opened] == ["m-9", "m-9"]
    assert [pb.StateDigest.FromString(e.body) for e in opened] == [
        pb.StateDigest(actor="seed", key="l0.s0", digest=b"\x01", after_event_id="m-9"),
        pb.StateDigest(actor="gate", key="", digest=b"\x02", after_event_id="m-9"),
    ]


async def test_the_timer_sends_what_the_core_asks_for_to_its_own_inbox(
    bus: Bus, run_id: str
) -> None:
    """A tick asks the core's timer with the time given; a message it returns is signed and sent
    to the actor's own inbox (counted), nothing is sent when it returns none or has no timer."""
    ring = KeyRing.generate()
    asked: list[int] = []

    def timer(now_ns: int) -> pb.BarrierVote | None:
        asked.append(now_ns)
        return pb.BarrierVote(barrier_step=now_ns) if now_ns % 2 else None

    keeper = _keeper(bus, run_id, ring, timer=timer)
    assert await keeper.tick(now_ns=4) is False
    assert await keeper.tick(now_ns=7) is True
    assert asked == [4, 7] and keeper.timed == 1
    (record,) = await _records(bus, keeper.inbox, ring)
    assert record.kind == kinds.BARRIER_VOTE and record.message == pb.BarrierVote(barrier_step=7)
    (entry,) = await bus.range(keeper.inbox)
    assert entry.fields["kind"] == b"barrier.vote"
    before = time.time_ns()
    await keeper.tick()
    assert asked[-1] >= before
    assert await _keeper(bus, run_id, ring).tick(now_ns=7) is False


async def test_every_skips_inactive_turns_and_a_missing_bus_and_ends_on_a_closed_one() -> None:
    """The loop works on active turns only, carries on past a turn that found Redis away, stops
    when told to and ends for good on a closed bus."""
    turns = iter([True, False, True, True, True, True])
    done: list[int] = []

    async def work() -> None:
        done.append(len(done))
        if len(done) == 2:
            raise BusUnavailable("away")
        if len(done) == 4:
            raise BusClosed("closed")

    await every(0, work, active=lambda: next(turns), running=lambda: True)
    assert done == [0, 1, 2, 3]
    stops = iter([True, True, False])
    done.clear()
    await every(0, work, active=lambda: True, running=lambda: next(stops), first_wait=True)
    assert done == [0, 1]


async def test_the_running_housekeeping_beats_at_once_and_trims_every_period(
    bus: Bus, run_id: str
) -> None:
    """Run while its host owns the actor, housekeeping beats at once and trims acked entries
    every ``bus.trim_every_s`` (never before the first period has passed), adding up what each
    trim took."""
    ring = KeyRing.generate()
    config = KasminaConfig.load(
        env={}, overrides={"bus.inbox_retention_s": 0.0, "bus.trim_every_s": 0.05}
    )
    keeper = Housekeeping(
        bus, run_id, f"kasmina:{{{run_id}}}:inbox:gate", Signer(ring, "gate"), config,
        name="gate", process="", heartbeat_s=60.0, counters=lambda: (0, {}),
    )  # fmt: skip
    for i in range(2):
        await bus.publish(keeper.inbox, {"x": str(i).encode()})
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run, lambda: True, lambda: not stop.is_set())
        await eventually(lambda: _true(keeper.trimmed == 2))
        await bus.publish(keeper.inbox, {"x": b"2"})
        await eventually(lambda: _true(keeper.trimmed == 3))
        stop.set()
        tg.cancel_scope.cancel()  # its turns sleep a period before they look again
    assert len(await _records(bus, f"kasmina:{{{run_id}}}:heartbeats", ring)) == 1


async def test_the_first_trim_waits_a_whole_period(bus: Bus, run_id: str) -> None:
    """With a trim period of a minute, a host that has already beaten twice has trimmed
    nothing: the first trim comes a period after the start."""
    ring = KeyRing.generate()
    config = KasminaConfig.load(env={}, overrides={"bus.inbox_retention_s": 0.0})
    keeper = Housekeeping(
        bus, run_id, f"kasmina:{{{run_id}}}:inbox:gate", Signer(ring, "gate"), config,
        name="gate", process="", heartbeat_s=0.01, counters=lambda: (0, {}),
    )  # fmt: skip
    await bus.publish(keeper.inbox, {"x": b"0"})
    beats = f"kasmina:{{{run_id}}}:heartbeats"
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run, lambda: True, lambda: not stop.is_set())
        await eventually(lambda: _at_least(bus, beats, 2))
        stop.set()
        tg.cancel_scope.cancel()
    assert keeper.trimmed == 0 and len(await bus.range(keeper.inbox)) == 1


async def test_ticks_are_counted(bus: Bus, run_id: str) -> None:
    """Every message the timer sends is counted."""
    ring = KeyRing.generate()
    keeper = _keeper(bus, run_id, ring, timer=lambda now: pb.BarrierVote(barrier_step=now))
    for now in (1, 2, 3):
        assert await keeper.tick(now_ns=now) is True
    assert keeper.timed == 3


async def _true(value: bool) -> bool:
    return value


async def _at_least(bus: Bus, stream: str, n: int) -> bool:
    return len(await bus.range(stream)) >= n
