"""What a SeedActor decision means for the commands behind it: ``pb.CommandOutcome`` records.

Pure: from one decision's events (each carries the ``command_id`` of its chain, see
``actors.seed.core``) to one record per command id, in the order the ids first appear:

- a refusal among the command's events -> REFUSED (the first refusal's reason);
- else a transition -> TRANSITION (the first transition's from and to stage);
- else -> ACCEPTED (applied, or waiting for what ``awaiting`` names).

``awaiting`` is what the slot awaits for that chain once the decision is folded ("" = nothing).
A command's outcome (docs/wire.md §9) is its first record with result TRANSITION, REFUSED or
REJECTED, or ACCEPTED with nothing awaited; records before it report progress, records after it
the rest of the chain (germinate: GERMINATED, then TRAINING).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from leyline import pb

__all__ = ["AWAITING_TEXT", "awaiting_text", "outcomes_of"]

R = pb.OutcomeResult

AWAITING_TEXT = {
    "g0_evidence": "execution evidence (the G0 probe of the seed on the trainer)",
    "gate": "a gate result",
    "ack": "execution to apply the order (an ack from the trainer)",
}


def awaiting_text(label: str) -> str:
    """A sentence fragment for an ``awaiting`` label ("" for nothing)."""
    if not label:
        return ""
    head, _, rest = label.partition(":")
    text = AWAITING_TEXT.get(head, label)
    return f"{text} [{rest}]" if rest else text


def outcomes_of(
    events: Sequence[Message], *, command_id: str = "", action: str = ""
) -> list[pb.CommandOutcome]:
    """One record per command id among ``events``; ``command_id`` and ``action`` name the command
    that was decided, if the input was one (it gets a record even if no event names it)."""
    chains: dict[str, list[Message]] = {command_id: []} if command_id else {}
    for event in events:
        chain_id = getattr(event, "command_id", "")
        if chain_id:
            chains.setdefault(chain_id, []).append(event)
    return [
        _record(chain_id, chain, action if chain_id == command_id else "")
        for chain_id, chain in chains.items()
    ]


def _record(chain_id: str, chain: Sequence[Message], action: str) -> pb.CommandOutcome:
    """The outcome record of one command's chain of events."""
    record = pb.CommandOutcome(command_id=chain_id, action=action, result=R.OUTCOME_ACCEPTED)
    refused = [e for e in chain if isinstance(e, pb.LifecycleRefused)]
    moved = [e for e in chain if isinstance(e, pb.LifecycleTransition)]
    if refused:
        first_refusal = refused[0]
        record.result = R.OUTCOME_REFUSED
        record.reason = first_refusal.reason
        record.detail = first_refusal.request
        record.from_stage = first_refusal.stage
        record.to_stage = first_refusal.stage
    elif moved:
        record.result = R.OUTCOME_TRANSITION
        record.from_stage = moved[0].from_stage
        record.to_stage = moved[0].to_stage
        record.detail = moved[0].cause
    for event in chain:
        record.slot = getattr(event, "slot", record.slot)
        record.step = max(record.step, int(getattr(event, "step", 0)))
        if isinstance(event, pb.LifecycleProgress):
            if event.acked_id:  # the awaited order was applied: that wait is over
                record.awaiting = ""
            if event.HasField("awaiting"):
                record.awaiting = event.awaiting
    record.awaiting_text = awaiting_text(record.awaiting)
    record.verified = True
    return record
