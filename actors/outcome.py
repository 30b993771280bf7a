"""What a command came to, as a client reads it from the outcomes stream (docs/wire.md §9): the
:class:`Outcome` records, the shed run covering a command, the rejections of copies claiming its
id, and :class:`CommandTimeout`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict

from actors.eventlog import BadEntry, LogRecord
from contracts import streams
from leyline import pb

__all__ = [
    "CommandTimeout",
    "Following",
    "Outcome",
    "rejected_elsewhere",
    "shed_outcome",
    "unread_note",
]


def unread_note(unverified: Counter[str]) -> str:
    """Why a wait may have missed its outcome: records on the stream that did not verify."""
    if not unverified:
        return ""
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(unverified.items()))
    return (
        f"; {sum(unverified.values())} outcome record(s) did not verify ({reasons}): outcomes "
        "are signed with the actor key, so the client's key file must hold it"
    )


class CommandTimeout(TimeoutError):
    """No outcome was recorded for a command in time; ``last`` is its last progress record."""

    def __init__(self, message: str, *, last: Outcome | None = None, unverified: int = 0) -> None:
        super().__init__(message)
        self.last = last
        self.unverified = unverified  # outcome records seen that this key file could not verify


_RESULTS = {
    pb.OUTCOME_ACCEPTED: "accepted",
    pb.OUTCOME_TRANSITION: "transition",
    pb.OUTCOME_REFUSED: "refused",
    pb.OUTCOME_REJECTED: "rejected",
}
_LEGACY_KIND = {  # the record kinds ``kind`` named before the outcomes stream
    "transition": "lifecycle.transition",
    "refused": "lifecycle.refused",
    "rejected": "rejection",
    "accepted": "accepted",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One ``command.outcome`` record of a command (docs/wire.md §9)."""

    command_id: str
    result: str  # accepted | transition | refused | rejected
    message: pb.CommandOutcome
    entry_id: str

    @classmethod
    def of(cls, message: pb.CommandOutcome, entry_id: str) -> Outcome:
        """The client's view of a record."""
        result = _RESULTS.get(message.result, "rejected")
        return cls(message.command_id, result, message, entry_id)

    @property
    def kind(self) -> str:
        """``lifecycle.transition``, ``lifecycle.refused``, ``rejection`` or ``accepted``."""
        return _LEGACY_KIND[self.result]

    @property
    def ok(self) -> bool:
        """True for a transition or an acceptance."""
        return self.result in ("transition", "accepted")

    @property
    def final(self) -> bool:
        """True when this record is the command's outcome (not progress: accepted and awaiting)."""
        return self.result != "accepted" or not self.message.awaiting

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        body = MessageToDict(self.message, preserving_proto_field_name=True)
        return {
            **body,
            "command_id": self.command_id,
            "ok": self.ok,
            "result": self.result,
            "kind": self.kind,
            "entry_id": self.entry_id,
        }


def shed_outcome(command_id: str, entry_id: str, record: pb.Rejection) -> Outcome:
    """A command's outcome read from the ``overloaded`` record of the shed run covering it."""
    message = pb.CommandOutcome(
        command_id=command_id,
        result=pb.OUTCOME_REJECTED,
        reason=record.reason_code,
        detail=record.detail,
        verified=False,  # the command itself was never verified: it was shed undecided
        actor=record.actor,
    )
    return Outcome.of(message, entry_id)


def rejected_elsewhere(outcome: pb.CommandOutcome, entry: tuple[str, str] | None) -> bool:
    """A rejection of another inbox entry than the command's own: a copy of the frame (anyone
    who can write to Redis can add one) rejected as replayed, or with its signature broken so
    that its id is only claimed, or written to another inbox (even under the same entry id,
    ``XADD`` with an explicit id) and rejected there. Either way it is not this command's
    outcome: only the actor that reads the command's inbox rejects the command's entry."""
    if entry is None or outcome.result != pb.OUTCOME_REJECTED:
        return False
    other_entry = bool(outcome.entry_id) and outcome.entry_id != entry[1]
    return other_entry or outcome.actor != streams.inbox_actor(entry[0])


@dataclass
class Following:
    """What a wait for one command has read so far from the outcomes stream: where it is, the
    last progress record, the records it could not verify and the rejected copies it passed
    over (:meth:`actors.client.KasminaClient.wait`)."""

    command_id: str
    entry: tuple[str, str] | None
    on_progress: Callable[[Outcome], None] | None = None
    cursor: str = "0-0"
    last: Outcome | None = None
    unverified: Counter[str] = field(default_factory=Counter)
    copies: int = 0

    def see(self, record: LogRecord | BadEntry) -> Outcome | None:
        """Take the next record of the stream: the command's outcome if this is it."""
        self.cursor = record.entry_id
        if isinstance(record, BadEntry):
            self.unverified[record.reason.value] += 1
            return None
        message = record.message
        if not isinstance(message, pb.CommandOutcome) or message.command_id != self.command_id:
            return None
        if rejected_elsewhere(message, self.entry):  # a rejected copy that claims this id
            self.copies += 1
            return None
        outcome = Outcome.of(message, record.entry_id)
        if outcome.final:
            return outcome
        self.last = outcome
        if self.on_progress is not None:
            self.on_progress(outcome)
        return None

    def timed_out(self, timeout_s: float) -> CommandTimeout:
        """The timeout to raise: what was seen, and why an outcome may have been missed."""
        copied = f"; {self.copies} rejected copies of it were passed over" if self.copies else ""
        return CommandTimeout(
            f"no outcome for command {self.command_id} within {timeout_s:g} s"
            + copied
            + unread_note(self.unverified),
            last=self.last,
            unverified=sum(self.unverified.values()),
        )
