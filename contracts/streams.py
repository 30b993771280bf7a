"""Stream and key names of a run. Every key carries the run id as a Redis Cluster hash tag."""

from __future__ import annotations

import re

SLOT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
RUN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

ACTOR_KINDS = ("seed", "gate", "safety", "telemetry", "barrier", "execution")


def _check_run(run: str) -> str:
    if not RUN_RE.fullmatch(run):
        raise ValueError(f"invalid run id {run!r}: use 1-64 characters of [A-Za-z0-9_.-]")
    return run


def check_slot(slot: str) -> str:
    """Return ``slot`` if it is a valid slot id, else raise ValueError."""
    if not SLOT_RE.fullmatch(slot):
        raise ValueError(f"invalid slot id {slot!r}: use 1-128 characters of [A-Za-z0-9_.:-]")
    return slot


def prefix(run: str) -> str:
    """The key prefix of a run: ``kasmina:{run}:``."""
    return f"kasmina:{{{_check_run(run)}}}:"


def address(stream: str) -> tuple[str, str]:
    """``(run, destination)`` of a stream key ``kasmina:{RUN}:DEST`` (the envelope v2 binding).

    The destination is the key without the run prefix: ``inbox:seed:layer1.s0``, ``events``…
    Raises ValueError for a key that is not a Kasmina stream of a valid run.
    """
    if stream.startswith("kasmina:{"):
        end = stream.find("}:", 9)
        if end > 0:
            run, dest = stream[9:end], stream[end + 2 :]
            if dest and RUN_RE.fullmatch(run):
                return run, dest
    raise ValueError(f"not a Kasmina stream key: {stream!r}")


def inbox(run: str, actor: str, key: str | None = None) -> str:
    """The inbox stream of an actor (per slot for SeedActors, per rank for ExecutionActors)."""
    if actor not in ACTOR_KINDS:
        raise ValueError(f"unknown actor kind {actor!r}")
    name = f"{prefix(run)}inbox:{actor}"
    return f"{name}:{key}" if key is not None else name


def group(actor: str) -> str:
    """The consumer group through which the actor named ``actor`` (``seed:<slot>``, ``gate``,
    ``execution:<rank>``, ...) reads its inbox."""
    return f"actor:{actor}"


def inbox_key(run: str, actor: str, name: str) -> str | None:
    """The instance key (slot, rank) if ``name`` is the inbox of an ``actor`` instance of ``run``,
    else None: a name read from Redis (a registry set) is never routed to unchecked."""
    head = f"{inbox(run, actor)}:"
    if not name.startswith(head):
        return None
    key = name[len(head) :]
    return key if SLOT_RE.fullmatch(key) else None


def inbox_actor(stream: str) -> str | None:
    """The name of the actor that reads the inbox ``stream`` (``seed:SLOT``, ``gate``,
    ``execution:RANK``, ...), or None if ``stream`` is not an inbox."""
    try:
        _, dest = address(stream)
    except ValueError:
        return None
    kind, _, key = dest.removeprefix("inbox:").partition(":")
    if not dest.startswith("inbox:") or kind not in ACTOR_KINDS:
        return None
    return f"{kind}:{key}" if key else kind


def events(run: str) -> str:
    """The append-only event stream of a run (every state change)."""
    return f"{prefix(run)}events"


def telemetry(run: str) -> str:
    """Region/global telemetry summaries and critical events."""
    return f"{prefix(run)}telemetry"


def pruning(run: str) -> str:
    """Structured pruning: unit importance reports and pruning acks of every rank (capped)."""
    return f"{prefix(run)}pruning"


def dead_letter(run: str) -> str:
    """Entries moved aside after too many deliveries."""
    return f"{prefix(run)}dead"


def rejected(run: str) -> str:
    """Bad input, with its reason code."""
    return f"{prefix(run)}rejected"


def quarantine(run: str) -> str:
    """Events of the log that verified but could not be folded (a duplicate, a gap: a doctored
    log), set aside by a rebuild so the actor keeps serving (capped)."""
    return f"{prefix(run)}quarantine"


def outcomes(run: str) -> str:
    """What became of each command, by its id (``command.outcome`` records; docs/wire.md §9)."""
    return f"{prefix(run)}outcomes"


def confirmations(run: str) -> str:
    """Step confirmations: every rank's acknowledgement of every order it applied or refused
    (``exec.ack``, capped), for controllers and ``kasmina status``."""
    return f"{prefix(run)}confirmations"


def heartbeats(run: str) -> str:
    """Actor heartbeats (capped)."""
    return f"{prefix(run)}heartbeats"


def registry(run: str, actor: str) -> str:
    """Set of the inbox streams of an actor kind's instances (every slot's, every rank's), which
    fan-out routes to; each instance adds its inbox when it starts serving."""
    if actor not in ACTOR_KINDS:
        raise ValueError(f"unknown actor kind {actor!r}")
    return f"{prefix(run)}registry:{actor}"


def lease(run: str, group: str) -> str:
    """Ownership lease of an actor (by its consumer group): the one process serving it."""
    return f"{prefix(run)}lease:{group}"


def nonce_key(run: str, message_id: str) -> str:
    """Key of the nonce guard entry for a message id (``message_id`` is ``<group>|<id>``)."""
    return f"{prefix(run)}nonce:{message_id}"
