"""Key roles: which kinds of message a key may sign.

A key holds one or more roles. A receiver checks, after the MAC, that the signing key's roles allow
the message's kind, so a leaked trainer key cannot issue controller commands, nor forge lifecycle
events, gate results or safety verdicts (The Update Framework's lesson: one role, one set of keys).

- ``controller``: Tamiyo (a policy or a person) commanding slots, and the pruning controller
  ordering unit masks.
- ``trainer``: Tolaria's side, the ExecutionActor of each rank: acknowledgements, step reports,
  raw telemetry, safety signals it observes, barrier votes, unit importance reports, pruning
  acknowledgements and the records of what it rejected.
- ``actor``: the actor processes (``kasmina run``): events (the votes the BarrierActor folds
  among them), orders, gate traffic, verdicts, records.
- ``operator``: a person at the CLI: commands (pause, resume, emergency stop, ...), pruning orders
  and recordings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "KINDS_BY_ROLE",
    "RANK_SENDER",
    "ROLES",
    "SENDER_PATTERN",
    "SIGNERS_BY_STREAM",
    "allowed",
    "stream_refusal",
    "valid_sender",
]

ROLES = frozenset({"controller", "trainer", "actor", "operator"})

_TRAINER = frozenset(
    {
        "exec.ack",
        "step.report",
        "telemetry.raw",
        "telemetry.batch",
        "telemetry.critical",
        "safety.signal",
        "barrier.vote",
        "actor.heartbeat",
        "pruning.importance",
        "pruning.ack",
        "rejection",  # the ExecutionActor's records of what it rejected
    }
)
_ACTOR = frozenset(
    {
        "lifecycle.transition",
        "lifecycle.refused",
        "lifecycle.progress",
        "gate.request",
        "gate.result",
        "exec.order",
        "telemetry.region",
        "telemetry.global",
        "telemetry.critical",
        "safety.signal",
        "safety.verdict",
        "checkpoint.request",
        "barrier.commit",
        "barrier.byzantine",
        "barrier.timeout",
        "barrier.propose",
        "barrier.tick",
        "barrier.vote",  # a vote folded into the BarrierActor's log is its event
        "rejection",
        "command.outcome",
        "state.digest",
        "actor.heartbeat",
    }
)

KINDS_BY_ROLE: dict[str, frozenset[str]] = {
    "controller": frozenset({"seed.command", "pruning.order"}),
    "trainer": _TRAINER,
    "actor": _ACTOR,
    "operator": frozenset({"seed.command", "pruning.order"}),
}

SENDER_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")

#: The run's own logs and records, and the roles that may sign for each whatever the kind: the
#: event log, the outcomes, the quarantine notes and the telemetry summaries are the actors'
#: alone; the rejection records and heartbeats are also the trainer's (its ExecutionActor's),
#: in a rank's own name only (``RANK_SENDER``). A kind a role may sign elsewhere (a trainer's
#: barrier vote to the BarrierActor's inbox) is refused on these streams.
SIGNERS_BY_STREAM: dict[str, frozenset[str]] = {
    "events": frozenset({"actor"}),
    "outcomes": frozenset({"actor"}),
    "quarantine": frozenset({"actor"}),
    "telemetry": frozenset({"actor"}),
    "rejected": frozenset({"actor", "trainer"}),
    "heartbeats": frozenset({"actor", "trainer"}),
}
RANK_SENDER = re.compile(r"execution:[0-9]{1,9}")

_ALLOWED: dict[frozenset[str], frozenset[str]] = {}


def allowed(roles: Iterable[str]) -> frozenset[str]:
    """The kinds a key with ``roles`` may sign."""
    key = frozenset(roles)
    kinds = _ALLOWED.get(key)
    if kinds is None:
        kinds = _ALLOWED[key] = frozenset().union(*(KINDS_BY_ROLE[r] for r in key))
    return kinds


def stream_refusal(roles: Iterable[str], to: str, sender: str) -> str:
    """Why a key with ``roles`` may not sign as ``sender`` for the run stream ``to`` ("": it
    may; any stream not in ``SIGNERS_BY_STREAM`` is judged by kind alone)."""
    signers = SIGNERS_BY_STREAM.get(to)
    if signers is None:
        return ""
    held = signers.intersection(roles)
    if not held:
        return f"only {'/'.join(sorted(signers))} keys may sign for {to!r}"
    if "actor" not in held and not RANK_SENDER.fullmatch(sender):
        return f"a {'/'.join(sorted(held))} key signs for {to!r} only as execution:RANK"
    return ""


def valid_sender(sender: str) -> bool:
    """A sender name is 1-128 characters of ``[A-Za-z0-9_.:-]`` (no spaces, no control bytes)."""
    return SENDER_PATTERN.fullmatch(sender) is not None
