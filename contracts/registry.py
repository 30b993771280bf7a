"""The registry mapping an envelope ``kind`` to its Leyline protobuf type."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from google.protobuf.message import DecodeError, Message

from contracts.errors import BadBody, UnknownKind
from leyline import pb

KINDS: dict[str, type[Message]] = {
    "seed.command": pb.SeedCommand,
    "lifecycle.transition": pb.LifecycleTransition,
    "lifecycle.refused": pb.LifecycleRefused,
    "lifecycle.progress": pb.LifecycleProgress,
    "gate.request": pb.GateRequest,
    "gate.result": pb.GateResult,
    "exec.order": pb.ExecutionOrder,
    "exec.ack": pb.ExecutionAck,
    "step.report": pb.StepReport,
    "telemetry.raw": pb.TelemetryRaw,
    "telemetry.batch": pb.TelemetryBatch,
    "telemetry.region": pb.RegionSummary,
    "telemetry.global": pb.GlobalSummary,
    "telemetry.critical": pb.CriticalEvent,
    "safety.signal": pb.SafetySignal,
    "safety.verdict": pb.SafetyVerdict,
    "checkpoint.request": pb.CheckpointRequest,
    "barrier.vote": pb.BarrierVote,
    "barrier.commit": pb.BarrierCommit,
    "barrier.byzantine": pb.ByzantineReport,
    "barrier.timeout": pb.BarrierTimeout,
    "rejection": pb.Rejection,
    "state.digest": pb.StateDigest,
    "actor.heartbeat": pb.Heartbeat,
}


class Registry(Mapping[str, type[Message]]):
    """kind <-> protobuf type, both ways."""

    def __init__(self, kinds: Mapping[str, type[Message]]) -> None:
        self._by_kind = dict(kinds)
        self._by_name = {t.DESCRIPTOR.full_name: k for k, t in self._by_kind.items()}
        if len(self._by_name) != len(self._by_kind):
            raise ValueError("each protobuf type may be registered under one kind only")

    def __getitem__(self, kind: str) -> type[Message]:
        return self._by_kind[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_kind)

    def __len__(self) -> int:
        return len(self._by_kind)

    def kind_of(self, message: Message) -> str:
        """The kind a message is sent under."""
        try:
            return self._by_name[message.DESCRIPTOR.full_name]
        except KeyError:
            raise UnknownKind(message.DESCRIPTOR.full_name) from None

    def parse(self, kind: str, body: bytes) -> Message:
        """Parse ``body`` as the kind's type; raises UnknownKind / BadBody."""
        cls = self._by_kind.get(kind)
        if cls is None:
            raise UnknownKind(kind)
        message = cls()
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise BadBody(f"{kind}: {exc}") from None
        return message


REGISTRY = Registry(KINDS)
