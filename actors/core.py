"""What every pure actor core shares: Context, Decision, fold, replay errors, canonical digests.

A core is four functions over an immutable state::

    initial_state(...) -> S
    decide(state: S, msg: Message, ctx: Context) -> Decision
    evolve(state: S, event: Message) -> S          # folds ONE event
    digest(state: S) -> bytes                      # sha256 of a canonical encoding

``decide`` never mutates and never reads a clock, a random source or the network: the training
step, the id of the message being handled and any fresh ids arrive in ``ctx``. The events of a
decision are appended to the run's event stream and folded with ``evolve``; the outgoing messages
go to other actors' inboxes (a message may be both).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from contracts.config import KasminaConfig
from contracts.errors import Reason
from contracts.registry import REGISTRY

__all__ = [
    "Context",
    "CoreSpec",
    "Decision",
    "IllegalTransition",
    "Message",
    "Outgoing",
    "ReplayError",
    "SeqDuplicate",
    "SeqGap",
    "UnknownEvent",
    "canonical_bytes",
    "check_seq",
    "digest_plain",
    "fold",
    "kind_of",
    "lone_decision",
    "next_boundary",
    "released",
]

S = TypeVar("S")

_DEFAULT_CONFIG = KasminaConfig()


class ReplayError(Exception):
    """An event stream that cannot be folded: a gap, a duplicate, or an impossible event."""


class SeqGap(ReplayError):
    """An event's ``seq`` skips ahead of the next expected number (events are missing)."""


class SeqDuplicate(ReplayError):
    """An event's ``seq`` was already folded (an event is repeated or out of order)."""


class IllegalTransition(ReplayError):
    """A lifecycle transition that the docs/design.md §2 table does not allow, or from the wrong stage."""


class UnknownEvent(ReplayError):
    """An event type that this core does not fold."""


def check_seq(key: str, current: int, seq: int) -> None:
    """Raise SeqGap / SeqDuplicate unless ``seq == current + 1``."""
    if seq == current + 1:
        return
    if seq <= current:
        raise SeqDuplicate(f"{key}: event seq {seq} already folded (state is at seq {current})")
    raise SeqGap(f"{key}: event seq {seq} skips {current + 1}..{seq - 1}")


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a decision may depend on besides state and message.

    ``now_step``: the latest training step the shell knows of (cores also track steps they
    folded, and use the larger); ``message_id``: id of the message being decided (becomes the
    ``causation_id`` of the events); ``ids``: fresh ids for new orders/requests, consumed in order
    (when exhausted, ids are derived deterministically from ``message_id``); ``config``: the
    thresholds; ``now_s``: wall time in seconds, only for rate limits that are not replayed.
    """

    now_step: int = 0
    message_id: str = ""
    ids: tuple[str, ...] = ()
    config: KasminaConfig = field(default_factory=lambda: _DEFAULT_CONFIG)
    now_s: float = 0.0

    def new_id(self, index: int) -> str:
        """The ``index``-th fresh id of this decision (deterministic)."""
        if index < len(self.ids):
            return self.ids[index]
        return f"{self.message_id or 'msg'}.{index}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for another actor's inbox.

    ``to`` is an actor kind (``contracts.streams.ACTOR_KINDS``); ``key`` the slot (SeedActor) or
    rank (ExecutionActor) of that inbox, or None: the single inbox of a singleton actor (gate,
    safety, telemetry, barrier), or every instance of a keyed one (the shell fans out: an
    ExecutionOrder to every rank's inbox, a run-wide emergency-stop verdict to every slot's).
    """

    to: str
    key: str | None
    message: Message

    @property
    def kind(self) -> str:
        """The envelope kind of the message."""
        return kind_of(self.message)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``decide``: events to append and fold, messages to send.

    ``rejected`` is set when the input was refused (e.g. a barrier vote from a rank outside the
    world): the shell records that reason code, with ``detail``, on the rejected stream. A refusal
    may still carry events (an illegal seed command's ``lifecycle.refused``), which are appended
    and folded like any others. ``telemetry`` goes to the run's capped telemetry stream, not the
    event log; ``outcomes`` (``command.outcome`` records) to the run's outcomes stream, where a
    sender finds what became of its command. ``folded`` (optional) is the state the events fold
    to, for a core that folds while it decides (the SeedActor's builder): its host takes it
    instead of folding them a second time.
    """

    events: tuple[Message, ...] = ()
    outgoing: tuple[Outgoing, ...] = ()
    rejected: Reason | None = None
    detail: str = ""
    telemetry: tuple[Message, ...] = ()
    folded: Any = None  # the state ``events`` fold to, when the core folded them while deciding
    outcomes: tuple[Message, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing is appended or sent."""
        return not self.events and not self.outgoing

    @property
    def lone(self) -> bool:
        """True for one event and nothing else (no message, outcome, telemetry or refusal): a
        host may merge it with a neighbour's lone event (``CoreSpec.merge``)."""
        return (
            len(self.events) == 1
            and self.rejected is None
            and not self.outgoing
            and not self.outcomes
            and not self.telemetry
        )

    @classmethod
    def refuse(cls, reason: Reason, detail: str = "") -> Decision:
        """A refusal without events: recorded on the rejected stream as ``reason``."""
        return cls(rejected=reason, detail=detail)


_SET = {name: getattr(Decision, name).__set__ for name in Decision.__slots__}
_SET_EVENTS, _SET_OUTGOING, _SET_REJECTED, _SET_DETAIL = (
    _SET["events"],
    _SET["outgoing"],
    _SET["rejected"],
    _SET["detail"],
)
_SET_TELEMETRY, _SET_FOLDED, _SET_OUTCOMES = _SET["telemetry"], _SET["folded"], _SET["outcomes"]
if len(_SET) != 7:  # every slot is set below
    raise TypeError("lone_decision does not set every field of Decision")


def lone_decision(event: Message, folded: Any) -> Decision:
    """``Decision(events=(event,), folded=folded)``, each slot set directly: a frozen dataclass's
    ``__init__`` sets its seven fields through ``object.__setattr__``, three times the cost, and
    this is the decision of every step report that only advances a slot (``actors.seed.fast``)."""
    decision: Decision = object.__new__(Decision)
    _SET_EVENTS(decision, (event,))
    _SET_OUTGOING(decision, ())
    _SET_REJECTED(decision, None)
    _SET_DETAIL(decision, "")
    _SET_TELEMETRY(decision, ())
    _SET_FOLDED(decision, folded)
    _SET_OUTCOMES(decision, ())
    return decision


@dataclass(frozen=True, slots=True)
class CoreSpec(Generic[S]):
    """A core as its hosts see it: the kinds it accepts, the events that are its own, and its
    four functions. The shell (``actors.logic``) and replay (``actors.replay``) read the same
    spec, so a kind is declared once. ``decide`` is None for a core whose live decisions are not
    a function of its folded state (the TelemetryActor's rate-limited aggregator)."""

    actor: str  # digest name: "seed", "gate", "safety", "barrier", "telemetry"
    accepts: frozenset[str]
    own_events: frozenset[str]
    initial: Callable[[str], S]  # the key (slot, or "" for a singleton) -> the initial state
    decide: Callable[[S, Message, Context], Decision] | None
    evolve: Callable[[S, Message], S]
    digest: Callable[[S], bytes]
    # the shell's timer: given the state and the clock (ns), a message for the actor's own inbox
    # (e.g. the BarrierActor's tick once a deadline has passed), or None
    timer: Callable[[S, int], Message | None] | None = None
    # two events folded one after the other as one (``merge(previous, event)``), or None when
    # they do not merge: folded where ``previous`` was, the merged event gives the state the two
    # give, with ``seq`` one lower. The shell merges the lone events of consecutive decisions of
    # one inbox batch with it (the SeedActor's step-report bookkeeping).
    merge: Callable[[Message, Message], Message | None] | None = None
    # the state two merged events give, numbered as the merged event: from the state the second
    # event's decision folded to (``Decision.folded``) and the merged event. A host with it takes
    # that state instead of folding the merged event again from the state before the first.
    renumber: Callable[[S, Message], S] | None = None
    # the decision on a message that needs no Context (the SeedActor's step report that only
    # advances the slot's progress): exactly what ``decide`` returns for it, or None when the
    # message needs ``decide``. A host asks it first and builds the Context only when it says None.
    fast: Callable[[S, Message, KasminaConfig], Decision | None] | None = None
    # a merged event that never reached the log (the entry carrying it was committed by
    # another shell), numbered to follow the state; None when the state makes it stale
    reissue: Callable[[S, Message], Message | None] | None = None


def kind_of(message: Message) -> str:
    """The envelope kind of a Leyline message (``contracts.registry``)."""
    return REGISTRY.kind_of(message)


def fold(evolve: Callable[[S, Message], S], state: S, events: Iterable[Message]) -> S:
    """``reduce(evolve, events, state)``."""
    for event in events:
        state = evolve(state, event)
    return state


def next_boundary(now_step: int, frequency: int) -> int:
    """The first multiple of ``frequency`` strictly after ``now_step + frequency``.

    Orders that change the forward apply there, so every rank has a full barrier period of lead.
    """
    if frequency < 1:
        raise ValueError("frequency must be >= 1")
    return ((now_step + frequency) // frequency + 1) * frequency


def released(order: Any, commit: int) -> bool:
    """Whether an ExecutionOrder may apply once the newest barrier commit a rank (every rank,
    in a data-parallel run) has received is ``commit``: always for an ungated order, from the
    commit of its ``after_barrier`` (or of a later barrier) on for a barrier-gated one."""
    return not order.barrier_gated or commit >= int(order.after_barrier)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    if isinstance(value, Message):
        return {
            "$pb": value.DESCRIPTOR.full_name,
            "v": value.SerializeToString(deterministic=True).hex(),
        }
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return {"$f": "nan"}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return {"$f": "inf" if value > 0 else "-inf"}
    return value


def canonical_bytes(plain: Any) -> bytes:
    """A canonical encoding of plain data (sorted keys, no whitespace, bytes as hex)."""
    return json.dumps(
        _plain(plain), sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def digest_plain(plain: Any) -> bytes:
    """sha256 of ``canonical_bytes(plain)``."""
    return hashlib.sha256(canonical_bytes(plain)).digest()
