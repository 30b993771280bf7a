"""Adapters that let the actor shell drive each pure core (state kept here, decisions pure)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from actors.barrier import spec as barrier_spec
from actors.core import Context, CoreSpec, Decision
from actors.gates import spec as gates_spec
from actors.hosting import Meta
from actors.safety import spec as safety_spec
from actors.seed import spec as seed_spec
from actors.telemetry import TelemetryAggregator, render
from actors.telemetry.server import MetricsServer
from actors.telemetry.slots import SlotBoard
from actors.telemetry.spec import SPEC as TELEMETRY_SPEC
from contracts import KasminaConfig, Reason, kinds
from leyline import pb

S = TypeVar("S")

# a message with this field is addressed to one slot; looked up in its descriptor (a message
# without it then costs no AttributeError, as with hasattr)
_SLOT = "slot"
_ADDRESSED: dict[type, bool] = {}  # message type -> whether it has the field (looked up once)
MAX_STEP = 2**53  # a reported training step at or above this is refused (no run gets there)
TIMER_REPEAT_NS = 1_000_000_000  # a timer message not yet decided is sent again after this


def _addressed(cls: type[Message]) -> bool:
    """Whether messages of ``cls`` name a slot (have the ``slot`` field)."""
    known = _ADDRESSED.get(cls)
    if known is None:
        known = _ADDRESSED[cls] = _SLOT in cls.DESCRIPTOR.fields_by_name
    return known


class PureLogic(Generic[S]):
    """An ActorLogic over a four-function core (its :class:`~actors.core.CoreSpec`)."""

    def __init__(self, name: str, key: str, spec: CoreSpec[S], config: KasminaConfig) -> None:
        if spec.decide is None:
            raise ValueError(f"the {spec.actor} core has no pure decide")
        self.name = name
        self.key = key
        self.spec = spec
        self.accepts = spec.accepts
        self.config = config
        self._decide = spec.decide
        self._fast = spec.fast
        self.state: S = spec.initial(key)
        self.now_step = 0
        self._timed_ns = -TIMER_REPEAT_NS
        # the lone event of the last decision applied with events, and the state before it
        self._open: tuple[S, Message] | None = None

    def _mine(self, message: Message) -> bool:
        return not self.key or getattr(message, "slot", self.key) == self.key

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        if self.key and _addressed(type(message)):
            slot = getattr(message, _SLOT)
            if slot != self.key:
                return Decision.refuse(Reason.UNKNOWN_SLOT, f"{slot} sent to {self.key}")
        if isinstance(message, pb.StepReport):
            if message.step >= MAX_STEP:  # later orders at step + k must still fit the wire
                return Decision.refuse(Reason.INVALID, f"step {message.step} >= 2**53")
            if message.step > self.now_step:
                self.now_step = int(message.step)
        if self._fast is not None:  # decided without a Context (reads no clock)
            fast = self._fast(self.state, message, self.config)
            if fast is not None:
                return fast
        ctx = Context(
            now_step=self.now_step,
            message_id=meta.envelope.id,
            config=self.config,
            now_s=time.time(),
        )
        decision = self._decide(self.state, message, ctx)
        return _counted(decision) if kind == kinds.SEED_COMMAND else decision

    def apply(self, decision: Decision) -> None:
        if decision.events:
            self._open = (self.state, decision.events[0]) if decision.lone else None
        if decision.folded is not None:  # the core folded its events while deciding
            self.state = decision.folded
            return
        state = self.state
        for event in decision.events:
            state = self.spec.evolve(state, event)
        self.state = state

    def merge(self, decision: Decision) -> Message | None:
        """Take ``decision`` (one lone event) into the lone event of the last decision applied
        with events, when the core merges the two (``CoreSpec.merge``), and return the merged
        event. The state is the decision's folded one numbered as the merged event
        (``CoreSpec.renumber``), else the merged event folded from the state before the open one.
        None, and nothing done, when they do not merge (then ``apply`` it)."""
        spec = self.spec
        if spec.merge is None or self._open is None or not decision.lone:
            return None
        base, previous = self._open
        merged = spec.merge(previous, decision.events[0])
        if merged is None:
            return None
        if spec.renumber is not None and decision.folded is not None:
            self.state = spec.renumber(decision.folded, merged)
        else:
            self.state = spec.evolve(base, merged)
        self._open = (base, merged)
        return merged

    def reissue(self, event: Message) -> Message | None:
        """A merged event kept out of the log, numbered to follow the state
        (``CoreSpec.reissue``), or None (stale, or the core reissues nothing)."""
        spec = self.spec
        return None if spec.reissue is None else spec.reissue(self.state, event)

    def reset(self) -> None:
        self.state = self.spec.initial(self.key)
        self._open = None

    def fold(self, kind: str, message: Message) -> bool:
        if kind in self.spec.own_events and self._mine(message):
            self.state = self.spec.evolve(self.state, message)
            return True
        return False

    def snapshot(self) -> object:
        return (self.state, self._open, self.now_step)

    def restore(self, snapshot: object) -> None:
        self.state, self._open, self.now_step = snapshot  # type: ignore[misc]

    def digests(self) -> dict[tuple[str, str], bytes]:
        return {(self.spec.actor, self.key): self.spec.digest(self.state)}

    def timer(self, now_ns: int) -> Message | None:
        """What the core's timer sends to its own inbox now (at most once per second)."""
        if self.spec.timer is None or now_ns - self._timed_ns < TIMER_REPEAT_NS:
            return None
        message = self.spec.timer(self.state, now_ns)
        if message is not None:
            self._timed_ns = now_ns
        return message


def _counted(decision: Decision) -> Decision:
    """A command's decision, with an illegal command (its ``lifecycle.refused`` event) also a
    counted rejection."""
    if decision.rejected is not None:
        return decision
    refused = [e for e in decision.events if isinstance(e, pb.LifecycleRefused)]
    if not refused:
        return decision
    return replace(decision, rejected=Reason.ILLEGAL_TRANSITION, detail=refused[0].reason)


def seed_logic(slot: str, config: KasminaConfig) -> PureLogic[Any]:
    """The SeedActor of ``slot``."""
    return PureLogic(f"seed:{slot}", slot, seed_spec.SPEC, config)


def gate_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The GateActor."""
    return PureLogic("gate", "", gates_spec.SPEC, config)


def safety_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The SafetyActor."""
    return PureLogic("safety", "", safety_spec.SPEC, config)


def barrier_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The BarrierActor."""
    return PureLogic("barrier", "", barrier_spec.SPEC, config)


class TelemetryLogic:
    """The TelemetryActor: summaries go to the capped telemetry stream, not the event log."""

    name = "telemetry"
    accepts = TELEMETRY_SPEC.accepts

    def __init__(self, config: KasminaConfig) -> None:
        self.config = config
        self.aggregator = TelemetryAggregator(config.telemetry)
        self.board = SlotBoard()

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the latest global summary and the counters."""
        return render(
            self.aggregator.latest_global,
            self.aggregator.stats,
            self.board.views(),
            self.board.runtime_views(),
        )

    def metrics_server(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """The ``GET /metrics`` server of this actor (run it in a task group: ``serve``)."""
        return MetricsServer(self.metrics_text, port, host)

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        if isinstance(message, pb.TelemetryRaw):
            self.board.note(message)
        elif isinstance(message, pb.TelemetryBatch):
            self.board.note_many(message.items)
        decision = self.aggregator.decide(message, time.time())
        if decision.rejected is not None:
            return decision
        return Decision(telemetry=decision.events + tuple(o.message for o in decision.outgoing))

    def apply(self, decision: Decision) -> None:
        """The aggregator already advanced in ``handle`` (it is not replayed from the log)."""

    def reset(self) -> None:
        """Aggregation windows restart empty after a rebuild."""

    def fold(self, kind: str, message: Message) -> bool:
        """Nothing of the event log is the telemetry actor's."""
        return False

    def snapshot(self) -> object:
        """Nothing of the event log is the telemetry actor's."""
        return None

    def restore(self, snapshot: object) -> None:
        """Nothing of the event log is the telemetry actor's."""

    def digests(self) -> dict[tuple[str, str], bytes]:
        return {}


def build_logic(actor: str, config: KasminaConfig, slot: str | None = None) -> Any:
    """The logic of one actor instance by name (``seed`` needs ``slot``)."""
    if actor == "seed":
        if not slot:
            raise ValueError("a seed actor needs a slot")
        return seed_logic(slot, config)
    factories: dict[str, Callable[[KasminaConfig], Any]] = {
        "gate": gate_logic,
        "safety": safety_logic,
        "barrier": barrier_logic,
        "telemetry": TelemetryLogic,
    }
    if actor not in factories:
        raise ValueError(f"unknown actor {actor!r}: choose seed, gate, safety, telemetry, barrier")
    return factories[actor](config)
