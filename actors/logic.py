"""Adapters that let the actor shell drive each pure core (state kept here, decisions pure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from actors import barrier, gates, safety, seed
from actors.core import Context, Decision
from actors.shell import Meta, Outcome
from actors.telemetry import CONTENT_TYPE, TelemetryAggregator, render
from contracts import KasminaConfig, Reason
from leyline import pb

S = TypeVar("S")

_REASONS = {r.value: r for r in Reason}


def _reason(text: str) -> Reason:
    return _REASONS.get(text, Reason.INVALID)


@dataclass(frozen=True, slots=True)
class CoreSpec(Generic[S]):
    """The four functions of a core plus what it consumes and which events are its own."""

    actor: str  # digest name: "seed", "gate", "safety", "barrier"
    accepts: frozenset[str]
    own_events: frozenset[str]
    initial: Callable[[], S]
    decide: Callable[[S, Message, Context], Decision]
    evolve: Callable[[S, Message], S]
    digest: Callable[[S], bytes]


def to_outcome(decision: Decision) -> Outcome:
    """Translate a core's Decision into the shell's Outcome."""
    outcome = Outcome(events=list(decision.events))
    outcome.outgoing = [(o.to, o.key, o.message) for o in decision.outgoing]
    if decision.rejected is not None:
        outcome.reject = _reason(decision.rejected)
        outcome.detail = decision.rejected
    return outcome


class PureLogic(Generic[S]):
    """An ActorLogic over a four-function core."""

    def __init__(self, name: str, key: str, spec: CoreSpec[S], config: KasminaConfig) -> None:
        self.name = name
        self.key = key
        self.spec = spec
        self.accepts = spec.accepts
        self.config = config
        self.state: S = spec.initial()
        self.now_step = 0

    def _mine(self, message: Message) -> bool:
        return not self.key or getattr(message, "slot", self.key) == self.key

    def handle(self, kind: str, message: Message, meta: Meta) -> Outcome:
        if self.key and hasattr(message, "slot") and message.slot != self.key:
            return Outcome(reject=Reason.UNKNOWN_SLOT, detail=f"{message.slot} sent to {self.key}")
        if isinstance(message, pb.StepReport):
            self.now_step = max(self.now_step, int(message.step))
        ctx = Context(
            now_step=self.now_step,
            message_id=meta.envelope.id,
            config=self.config,
            now_s=time.time(),
        )
        outcome = to_outcome(self.spec.decide(self.state, message, ctx))
        if kind == "seed.command" and outcome.reject is None:
            refused = [e for e in outcome.events if isinstance(e, pb.LifecycleRefused)]
            if refused:  # an illegal command: explicit event and a counted rejection
                outcome.reject = Reason.ILLEGAL_TRANSITION
                outcome.detail = refused[0].reason
        return outcome

    def apply(self, outcome: Outcome) -> None:
        state = self.state
        for event in outcome.events:
            state = self.spec.evolve(state, event)
        self.state = state

    def reset(self) -> None:
        self.state = self.spec.initial()

    def fold(self, kind: str, message: Message) -> None:
        if kind in self.spec.own_events and self._mine(message):
            self.state = self.spec.evolve(self.state, message)

    def digests(self) -> dict[tuple[str, str], bytes]:
        return {(self.spec.actor, self.key): self.spec.digest(self.state)}


def seed_logic(slot: str, config: KasminaConfig) -> PureLogic[Any]:
    """The SeedActor of ``slot``."""
    spec: CoreSpec[Any] = CoreSpec(
        actor="seed",
        accepts=frozenset(
            {"seed.command", "step.report", "gate.result", "exec.ack", "safety.verdict"}
        ),
        own_events=frozenset({"lifecycle.transition", "lifecycle.refused", "lifecycle.progress"}),
        initial=lambda: seed.initial_state(slot),
        decide=seed.decide,
        evolve=seed.evolve,
        digest=seed.digest,
    )
    return PureLogic(f"seed:{slot}", slot, spec, config)


def gate_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The GateActor."""
    spec: CoreSpec[Any] = CoreSpec(
        actor="gate",
        accepts=frozenset({"gate.request"}),
        own_events=frozenset({"gate.result"}),
        initial=gates.initial_state,
        decide=gates.decide,
        evolve=gates.evolve,
        digest=gates.digest,
    )
    return PureLogic("gate", "", spec, config)


def safety_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The SafetyActor."""
    spec: CoreSpec[Any] = CoreSpec(
        actor="safety",
        accepts=frozenset({"safety.signal", "step.report"}),
        own_events=frozenset({"safety.verdict", "checkpoint.request"}),
        initial=safety.initial_state,
        decide=safety.decide,
        evolve=safety.evolve,
        digest=safety.digest,
    )
    return PureLogic("safety", "", spec, config)


def barrier_logic(config: KasminaConfig) -> PureLogic[Any]:
    """The BarrierActor."""
    spec: CoreSpec[Any] = CoreSpec(
        actor="barrier",
        accepts=frozenset({"barrier.vote"}),
        own_events=frozenset(
            {"barrier.vote", "barrier.commit", "barrier.byzantine", "barrier.timeout"}
        ),
        initial=barrier.initial_state,
        decide=barrier.decide,
        evolve=barrier.evolve,
        digest=barrier.digest,
    )
    return PureLogic("barrier", "", spec, config)


class TelemetryLogic:
    """The TelemetryActor: summaries go to the capped telemetry stream, not the event log."""

    name = "telemetry"
    accepts = frozenset({"telemetry.raw", "telemetry.batch"})

    def __init__(self, config: KasminaConfig) -> None:
        self.config = config
        self.aggregator = TelemetryAggregator(config.telemetry)
        self.server: ThreadingHTTPServer | None = None
        if config.telemetry.prometheus_port is not None:
            self.serve_metrics(config.telemetry.prometheus_port)

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of the latest global summary and the counters."""
        return render(self.aggregator.latest_global, self.aggregator.stats)

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        logic = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = logic.metrics_text()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: scrapes are not worth a log line."""

        self.server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(
            target=self.server.serve_forever, daemon=True, name="kasmina-metrics"
        ).start()
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop the metrics server, if any."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handle(self, kind: str, message: Message, meta: Meta) -> Outcome:
        decision = self.aggregator.decide(message, time.time())
        return Outcome(telemetry=list(decision.events) + [o.message for o in decision.outgoing])

    def apply(self, outcome: Outcome) -> None:
        """The aggregator already advanced in ``handle`` (it is not replayed from the log)."""

    def reset(self) -> None:
        """Aggregation windows restart empty after a rebuild."""

    def fold(self, kind: str, message: Message) -> None:
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
