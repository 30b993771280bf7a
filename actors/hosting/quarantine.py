"""The run's quarantine stream: what a host set aside while rebuilding, as signed notes.

Three kinds of note, each a :class:`pb.Rejection` with a plain ``reason`` field beside the frame:
``unfoldable`` (an event that verifies but that the core refused to fold: a duplicate, a gap),
``log_regressed`` (the log lacks events the host had committed; it kept its own state) and
``group_moved`` (its inbox's consumer group was found past the stream's end and moved back).
"""

from __future__ import annotations

from actors.eventlog import LogRecord
from actors.hosting.inbox import FRAME
from bus import Bus
from contracts import Reason, Signer, kinds, streams
from leyline import pb

__all__ = [
    "KEY_REFUSALS",
    "QUARANTINE_MAXLEN",
    "UnverifiableLog",
    "note_group_moved",
    "note_regressed",
    "note_unfoldable",
]

QUARANTINE_MAXLEN = 10_000
#: refusals of an entry for its key alone (the ring has it revoked, retired, or not at all): a
#: genuine event of the run's past, not a forgery, once the ring that signed it is not at hand
KEY_REFUSALS = frozenset({Reason.REVOKED_KEY, Reason.EXPIRED_KEY, Reason.UNKNOWN_KEY})


class UnverifiableLog(RuntimeError):
    """A rebuild found the actor's own events skipping ahead past entries its key ring refuses
    (a key revoked or dropped while the run lived): its state cannot be known, so the actor does
    not serve (it would decide on an old state and number its events again from there)."""

    def __init__(self, actor: str, refused: int, gap: Exception) -> None:
        super().__init__(
            f"{actor}: cannot rebuild: its events skip ahead ({gap}) past {refused} log entries "
            "whose key this key ring refuses (revoked, retired or unknown); run with the key "
            "ring that signed them, or end the run (kasmina record, with the old ring)"
        )


async def _publish(
    bus: Bus, signer: Signer, run: str, note: pb.Rejection, cause: str, extra: dict[str, bytes]
) -> None:
    stream = streams.quarantine(run)
    frame = signer.seal(kinds.REJECTION, note, stream=stream, causation_id=cause)
    fields = {FRAME: frame, "kind": kinds.REJECTION.encode(), **extra}
    await bus.publish(stream, fields, maxlen=QUARANTINE_MAXLEN)


async def note_unfoldable(
    bus: Bus, signer: Signer, run: str, actor: str, record: LogRecord, why: str
) -> None:
    """Record an event ``actor``'s core refused to fold (``why``), by its entry id."""
    env = record.envelope
    note = pb.Rejection(
        reason_code="unfoldable",
        stream=record.stream,
        entry_id=record.entry_id,
        kind=env.kind,
        sender=env.sender,
        detail=why[:500],
        message_id=env.id,
        actor=actor,
    )
    extra = {"entry": record.entry_id.encode(), "reason": b"unfoldable"}
    await _publish(bus, signer, run, note, env.id, extra)


async def note_regressed(bus: Bus, signer: Signer, run: str, actor: str) -> None:
    """Record that ``actor``'s rebuild found the log behind the state it had committed."""
    note = pb.Rejection(
        reason_code="log_regressed",
        stream=streams.events(run),
        detail="the rebuilt state never reached the state this host last committed: "
        "events were deleted from the log; the committed state is kept",
        actor=actor,
    )
    await _publish(bus, signer, run, note, "", {"reason": b"log_regressed"})


async def note_group_moved(
    bus: Bus, signer: Signer, run: str, actor: str, inbox: str, detail: str
) -> None:
    """Record that ``actor`` found its group past the end of ``inbox`` and moved it back."""
    note = pb.Rejection(reason_code="group_moved", stream=inbox, detail=detail[:500], actor=actor)
    await _publish(bus, signer, run, note, "", {"reason": b"group_moved"})
