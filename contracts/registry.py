"""The registry mapping an envelope ``kind`` to its Leyline protobuf type."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from google.protobuf.message import DecodeError, Message

from contracts import kinds
from contracts.errors import BadBody, UnknownKind
from leyline import pb

KINDS: dict[str, type[Message]] = {
    kinds.SEED_COMMAND: pb.SeedCommand,
    kinds.LIFECYCLE_TRANSITION: pb.LifecycleTransition,
    kinds.LIFECYCLE_REFUSED: pb.LifecycleRefused,
    kinds.LIFECYCLE_PROGRESS: pb.LifecycleProgress,
    kinds.GATE_REQUEST: pb.GateRequest,
    kinds.GATE_RESULT: pb.GateResult,
    kinds.EXEC_ORDER: pb.ExecutionOrder,
    kinds.EXEC_ACK: pb.ExecutionAck,
    kinds.STEP_REPORT: pb.StepReport,
    kinds.TELEMETRY_RAW: pb.TelemetryRaw,
    kinds.TELEMETRY_BATCH: pb.TelemetryBatch,
    kinds.TELEMETRY_REGION: pb.RegionSummary,
    kinds.TELEMETRY_GLOBAL: pb.GlobalSummary,
    kinds.TELEMETRY_CRITICAL: pb.CriticalEvent,
    kinds.SAFETY_SIGNAL: pb.SafetySignal,
    kinds.SAFETY_VERDICT: pb.SafetyVerdict,
    kinds.CHECKPOINT_REQUEST: pb.CheckpointRequest,
    kinds.BARRIER_VOTE: pb.BarrierVote,
    kinds.BARRIER_COMMIT: pb.BarrierCommit,
    kinds.BARRIER_BYZANTINE: pb.ByzantineReport,
    kinds.BARRIER_TIMEOUT: pb.BarrierTimeout,
    kinds.BARRIER_PROPOSE: pb.BarrierProposal,
    kinds.BARRIER_TICK: pb.BarrierTick,
    kinds.REJECTION: pb.Rejection,
    kinds.STATE_DIGEST: pb.StateDigest,
    kinds.HEARTBEAT: pb.Heartbeat,
    kinds.COMMAND_OUTCOME: pb.CommandOutcome,
    kinds.PRUNING_IMPORTANCE: pb.ImportanceReport,
    kinds.PRUNING_ORDER: pb.PruningOrder,
    kinds.PRUNING_ACK: pb.PruningAck,
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
        """Parse ``body`` as the kind's type, unknown fields dropped; raises UnknownKind / BadBody."""
        cls = self._by_kind.get(kind)
        if cls is None:
            raise UnknownKind(kind)
        message = cls()
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise BadBody(f"{kind}: {exc}") from None
        # fields this version does not know are ignored, and never kept: a message copied into
        # an event or a summary carries only what the receiver understood (no padding rides in)
        message.DiscardUnknownFields()
        return message


REGISTRY = Registry(KINDS)
