"""What a command came to, as a client reads it from the outcomes stream (docs/wire.md §9): the
:class:`Outcome` records, the shed run covering a command, the rejections of copies claiming its
id, and :class:`CommandTimeout`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from leyline import pb

__all__ = ["CommandTimeout", "Outcome", "rejected_elsewhere", "shed_outcome", "unread_note"]


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
    that its id is only claimed. Either way it is not this command's outcome."""
    return (
        entry is not None
        and outcome.result == pb.OUTCOME_REJECTED
        and bool(outcome.entry_id)
        and outcome.entry_id != entry[1]
    )
