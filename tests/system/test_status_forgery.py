"""A trainer key (and a writer with any key) cannot make `status` show another actor alive or
another actor's rejections: heartbeats and records speak only for their signer's own rank."""

from __future__ import annotations

import time

import pytest
from google.protobuf.message import Message

from actors.attached import heartbeats
from actors.hosting.inbox import FRAME
from bus import Bus
from contracts import KeyRing, Signer, kinds, streams
from kasmina.commands.status import _rejected
from leyline import pb
from scenarios.cluster import role_rings

pytestmark = pytest.mark.anyio
YEAR_NS = 365 * 24 * 3600 * 10**9


async def _put(bus: Bus, stream: str, ring: KeyRing, sender: str, kind: str, msg: Message) -> None:
    frame = Signer(ring, sender).seal(kind, msg, stream=stream)
    await bus.publish(stream, {FRAME: frame, "kind": kind.encode()})


async def test_heartbeats_count_only_from_a_key_that_speaks_for_the_actor(
    bus: Bus, run_id: str
) -> None:
    """A trainer-key beat naming the gate (in the gate's or a rank's name) and any beat stamped
    a year ahead are not the latest beats; a rank's own beat and the actors' beats are."""
    every, signs = role_rings()
    stream, now = streams.heartbeats(run_id), time.time_ns()
    genuine = pb.Heartbeat(actor="gate", process="real", ts_ns=now - 10**9)
    await _put(bus, stream, signs["actor"], "kasmina-run:r", kinds.HEARTBEAT, genuine)
    rank = pb.Heartbeat(actor="execution:0", process="rank", ts_ns=now)
    await _put(bus, stream, signs["trainer"], "execution:0", kinds.HEARTBEAT, rank)
    for sender in ("gate", "execution:0"):
        forged = pb.Heartbeat(actor="gate", process="forged", ts_ns=now)
        await _put(bus, stream, signs["trainer"], sender, kinds.HEARTBEAT, forged)
    ahead = pb.Heartbeat(actor="gate", process="ahead", ts_ns=now + 10 * YEAR_NS)
    await _put(bus, stream, signs["actor"], "kasmina-run:r", kinds.HEARTBEAT, ahead)
    latest = await heartbeats(bus, run_id, every, now_ns=now)
    assert latest["gate"].process == "real"
    assert latest["execution:0"].process == "rank"


async def test_rejection_counts_come_only_from_records_their_signer_speaks_for(
    bus: Bus, run_id: str
) -> None:
    """A trainer-key record claiming four billion of the gate's rejections is counted as one
    unverified record, and so is one in its rank's own name that claims rejections on an inbox
    the rank does not read (a SeedActor's, another rank's, another run's, or none); a rank's
    record of its own inbox's rejections is counted by its reason."""
    every, signs = role_rings()
    stream = streams.rejected(run_id)
    forged = pb.Rejection(reason_code="bad_signature", actor="gate", count=4_000_000_000)
    await _put(bus, stream, signs["trainer"], "execution:0", kinds.REJECTION, forged)
    elsewhere = [
        streams.inbox(run_id, "seed", "s0"),
        streams.inbox(run_id, "execution", "1"),
        streams.inbox(f"{run_id}-other", "execution", "0"),
        "",
    ]
    for inbox in elsewhere:
        claim = pb.Rejection(reason_code="invalid", actor="execution:0", count=1000, stream=inbox)
        await _put(bus, stream, signs["trainer"], "execution:0", kinds.REJECTION, claim)
    own = pb.Rejection(reason_code="invalid", actor="execution:0", count=3,
                       stream=streams.inbox(run_id, "execution", "0"))  # fmt: skip
    await _put(bus, stream, signs["trainer"], "execution:0", kinds.REJECTION, own)
    assert await _rejected(bus, run_id, every) == {"invalid": 3, "unverified_record": 5}


async def test_confirmations_count_only_for_the_rank_their_signer_speaks_for(
    bus: Bus, run_id: str
) -> None:
    """A trainer key's confirmation claiming another rank applied an order is not counted (in
    `status` or by `publish --wait`); each rank's own confirmations are."""
    from actors.attached import confirmations, confirmed_by_rank
    from contracts import Verifier

    every, signs = role_rings()
    stream = streams.confirmations(run_id)
    own = pb.ExecutionAck(order_id="o-1", slot="s", ok=True, rank=0, applied_at_step=10)
    await _put(bus, stream, signs["trainer"], "execution:0", kinds.EXEC_ACK, own)
    for order in ("o-1", "o-2"):
        forged = pb.ExecutionAck(order_id=order, slot="s", ok=True, rank=1, applied_at_step=10)
        await _put(bus, stream, signs["trainer"], "execution:0", kinds.EXEC_ACK, forged)
    rank2 = pb.ExecutionAck(order_id="o-3", slot="s", ok=True, rank=2, applied_at_step=10)
    await _put(bus, stream, signs["trainer"], "execution:2", kinds.EXEC_ACK, rank2)
    acks = await confirmations(bus, run_id, Verifier(every, replay=True))
    assert sorted((a.rank, a.order_id) for a in acks) == [(0, "o-1"), (2, "o-3")]
    assert set(confirmed_by_rank(acks)) == {"0", "2"}


async def test_pruning_acks_count_only_for_an_addressed_rank_their_signer_speaks_for(
    bus: Bus, run_id: str
) -> None:
    """`publish prune --wait` counts a rank's ack only from that rank (or an actor key) and only
    for a rank the order went to: a trainer key's ack for another rank, or an ack from a rank
    outside the order, cannot complete the wait."""
    from actors.eventlog import LogRecord, read_log
    from contracts import Verifier
    from kasmina.commands.pruning import counted_rank

    every, signs = role_rings()
    stream = streams.pruning(run_id)
    acks = [
        ("execution:0", pb.PruningAck(order_id="p", rank=0, ok=True)),  # genuine
        ("execution:0", pb.PruningAck(order_id="p", rank=1, ok=True)),  # for another rank
        ("execution:9", pb.PruningAck(order_id="p", rank=9, ok=True)),  # not addressed
        ("execution:1", pb.PruningAck(order_id="other", rank=1, ok=True)),  # another order
        ("execution:1", pb.PruningAck(order_id="p", rank=1, ok=True)),  # genuine
    ]
    for sender, ack in acks:
        await _put(bus, stream, signs["trainer"], sender, kinds.PRUNING_ACK, ack)
    verifier = Verifier(every, replay=True)
    ranks = {"execution:0", "execution:1"}
    records = [r async for r in read_log(bus, stream, verifier) if isinstance(r, LogRecord)]
    assert len(records) == len(acks)
    counted = [counted_rank(r, "p", ranks, verifier) for r in records]
    assert counted == ["execution:0", None, None, None, "execution:1"]


async def test_a_rank_beat_with_an_impossible_step_is_not_a_trainer(bus: Bus, run_id: str) -> None:
    """A trainer key's beat for a rank at step 2**64-1 (so that `publish prune` computes a step
    no integer field holds) is no attached trainer; a beat stamped a little ahead reads age 0."""
    from actors.attached import trainers

    every, signs = role_rings()
    stream, now = streams.heartbeats(run_id), time.time_ns()
    huge = pb.Heartbeat(actor="execution:5", process="evil", ts_ns=now, step=2**64 - 1)
    await _put(bus, stream, signs["trainer"], "execution:5", kinds.HEARTBEAT, huge)
    ahead = pb.Heartbeat(actor="execution:0", process="rank", ts_ns=now + 5 * 10**9, step=40)
    await _put(bus, stream, signs["trainer"], "execution:0", kinds.HEARTBEAT, ahead)
    seen = await trainers(bus, run_id, every, now_ns=now)
    assert [(t.rank, t.step) for t in seen] == [("0", 40)]
    assert seen[0].as_dict(now)["last_heartbeat_s"] == 0


async def test_thousands_of_streams_under_the_run_prefix_are_listed_in_json_and_summed_up_in_text(
    bus: Bus, run_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer's 450 one-entry streams under the run's prefix: the status object lists each (in
    name order, every figure right), the text report prints the first 200 and says how many more
    there are."""
    from bus import Append
    from kasmina.commands.status import SHOWN_STREAMS, _print, collect

    every, _ = role_rings()
    names = [f"{streams.prefix(run_id)}junk:{i:04d}" for i in range(450)]
    await bus.publish_many([Append(n, {"x": b"1"}) for n in names])
    status = await collect(bus, run_id, every)
    listed = [s for s in status["streams"] if s["name"].startswith("junk:")]
    assert [s["name"] for s in listed] == [n.removeprefix(streams.prefix(run_id)) for n in names]
    assert all((s["length"], s["pending"], s["groups"]) == (1, 0, 0) for s in listed)
    _print(status)
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("  junk:")]
    assert len(lines) == SHOWN_STREAMS
    more = len(status["streams"]) - SHOWN_STREAMS
    assert f"… and {more} more streams under the run's prefix (--json lists every one)" in text
