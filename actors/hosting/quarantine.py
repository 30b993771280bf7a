"""The run's quarantine stream: what a host set aside while rebuilding, as signed notes.

Three kinds of note, each a :class:`pb.Rejection` with a plain ``reason`` field beside the frame:
``unfoldable`` (an event that verifies but that the core refused to fold: a duplicate, a gap),
``log_regressed`` (the log lacks events the host had committed; it kept its own state) and
``group_moved`` (its inbox's consumer group was found past the stream's end and moved back).
"""

from __future__ import annotations

import logging

from actors.eventlog import BadEntry, LogRecord
from actors.hosting.inbox import FRAME
from bus import Bus
from contracts import Reason, Signer, kinds, streams
from leyline import pb

__all__ = [
    "KEY_REFUSALS",
    "QUARANTINE_MAXLEN",
    "Skipped",
    "UnverifiableLog",
    "note_group_moved",
    "note_regressed",
    "note_unfoldable",
]

QUARANTINE_MAXLEN = 10_000
log = logging.getLogger("kasmina.actors")
#: refusals of an entry for its key alone (the ring has it revoked, retired, or not at all):
#: the wrong key file, a key dropped while the run lived, or a writer's frame under a key id
KEY_REFUSALS = frozenset({Reason.REVOKED_KEY, Reason.EXPIRED_KEY, Reason.UNKNOWN_KEY})


class UnverifiableLog(RuntimeError):
    """The run's event log holds messages signed by a key the ring has revoked (a valid MAC
    under it): the run's past, which this ring no longer trusts. A rebuild cannot know
    the actor's state without them, so the actor does not serve (it would decide on an old state
    and number its events again from there)."""

    def __init__(self, actor: str, signed: int) -> None:
        super().__init__(
            f"{actor}: cannot rebuild: the event log holds {signed} entries signed by a key this"
            " key ring revokes; serve with the ring from before the revocation, or end the run"
        )


class Skipped:
    """The entries a rebuild leaves out (tampered, foreign, or signed by a key the ring refuses):
    the first ``shown`` logged one by one, the rest counted on one line at the end, which raises
    :class:`UnverifiableLog` if any was signed under a key the ring revoked."""

    def __init__(self, actor: str, shown: int = 3) -> None:
        self.actor, self.shown = actor, shown
        self.count = self.signed = 0

    def add(self, record: BadEntry) -> None:
        """One entry left out."""
        self.count += 1
        self.signed += record.signed
        if self.count <= self.shown:
            log.warning("%s: event %s skipped in rebuild: %s: %s", self.actor, record.entry_id,
                        record.reason.value, record.detail)  # fmt: skip

    def end(self) -> None:
        """After the whole log: the rest counted; UnverifiableLog if any was signed."""
        if self.count > self.shown:
            log.warning("%s: %d more entries of the event log skipped in rebuild", self.actor,
                        self.count - self.shown)  # fmt: skip
        if self.signed:
            raise UnverifiableLog(self.actor, self.signed)


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
