"""What a shell records when it refuses an input before its core sees it: the entry, the reason,
and what the frame said about itself (authenticated or merely claimed), so its sender can find
the refusal."""

from __future__ import annotations

import math

from actors.eventlog import LogRecord, read_log
from actors.shell import FRAME
from bus import Bus
from contracts import KeyRing, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.cluster import running_cluster

SLOT = "l0.s0"


async def _records(bus: Bus, stream: str, ring: KeyRing) -> dict[str, object]:
    """The messages of a recorded stream, keyed by what they name (entry id or command id)."""
    out: dict[str, object] = {}
    async for record in read_log(bus, stream, Verifier(ring, replay=True)):
        assert isinstance(record, LogRecord)
        message = record.message
        key = getattr(message, "command_id", "") or getattr(message, "entry_id", "")
        out[key] = message
    return out


async def test_refused_inputs_are_recorded_with_what_their_frames_said(
    bus: Bus, run_id: str
) -> None:
    """A stale command (its MAC checked), a command whose body does not parse, a kind the actor
    does not take and a command carrying a NaN are each recorded with their reason, the frame's
    id, kind and sender, and whether those were authenticated; the commands get their REJECTED
    outcome."""
    ring = KeyRing.generate()
    async with running_cluster(bus, run=run_id, slots=[SLOT], ring=ring) as cl:
        inbox = streams.inbox(run_id, "seed", SLOT)
        signer = Signer(ring, "tamiyo")
        cull = pb.SeedCommand(slot=SLOT, cull=pb.Cull())
        stale = signer.seal(kinds.SEED_COMMAND, cull, stream=inbox, ts_ns=10**18)
        unparsable = signer.seal(kinds.SEED_COMMAND, b"\xff\xff\xff", stream=inbox)
        unexpected = signer.seal(kinds.HEARTBEAT, pb.Heartbeat(actor="x"), stream=inbox)
        germinate = pb.SeedCommand(slot=SLOT)
        germinate.germinate.params["width"] = math.nan
        nan = signer.seal(kinds.SEED_COMMAND, germinate, stream=inbox)
        frames = {"stale": stale, "unparsable": unparsable, "unexpected": unexpected, "nan": nan}
        entries = {name: await bus.publish(inbox, {FRAME: f}) for name, f in frames.items()}
        opener = Verifier(ring, replay=True)
        ids = {name: opener.open(f, stream=inbox).id for name, f in frames.items()}
        await cl.settle()
    rejected = await _records(bus, streams.rejected(run_id), ring)
    expected = {
        "stale": ("stale", kinds.SEED_COMMAND),
        "unparsable": ("bad_body", kinds.SEED_COMMAND),
        "unexpected": ("unexpected_kind", kinds.HEARTBEAT),
        "nan": ("non_finite", kinds.SEED_COMMAND),
    }
    for name, (reason, kind) in expected.items():
        record = rejected[entries[name]]
        assert isinstance(record, pb.Rejection)
        assert (record.reason_code, record.kind, record.message_id, record.sender) == (
            reason, kind, ids[name], "tamiyo",
        ), name  # fmt: skip
        assert (record.stream, record.actor, record.verified) == (inbox, f"seed:{SLOT}", True)
    detail = rejected[entries["unparsable"]].detail  # type: ignore[attr-defined]
    assert detail.startswith("seed.command: ")  # the parse error, naming the kind
    outcomes = await _records(bus, streams.outcomes(run_id), ring)
    for name in ("stale", "unparsable", "nan"):
        outcome = outcomes[ids[name]]
        assert isinstance(outcome, pb.CommandOutcome)
        assert (outcome.result, outcome.reason) == (pb.OUTCOME_REJECTED, expected[name][0])
        assert outcome.entry_id == entries[name]  # the entry rejected, for its sender to match
