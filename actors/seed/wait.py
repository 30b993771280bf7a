"""What a slot waits for: the G0 evidence of a probe, a gate's result, or the ack of an order.

The state holds a :class:`Wait`; it becomes text only on the wire (``LifecycleProgress.awaiting``
and the canonical digest encoding): ``g0_evidence``, ``gate:<GATE>``, ``ack:<STAGE>`` or
``ack:<STAGE>:<what>`` for an in-stage order (pause, resume, adjust, drop_probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Wait"]

WaitKind = Literal["evidence", "gate", "ack"]


@dataclass(frozen=True, slots=True)
class Wait:
    """One wait of a slot (immutable)."""

    kind: WaitKind
    name: str = ""  # the gate's name ("G0_SANITY") or the order's stage name ("TRAINING")
    what: str = ""  # an in-stage order: "pause", "resume", "adjust", "drop_probe"

    @classmethod
    def evidence(cls) -> Wait:
        """The G0 evidence of a germination probe."""
        return cls("evidence")

    @classmethod
    def gate(cls, gate: str) -> Wait:
        """The result of gate ``gate`` (its name)."""
        return cls("gate", gate)

    @classmethod
    def ack(cls, stage: str, what: str = "") -> Wait:
        """The ack of an order for stage ``stage`` (its name), ``what`` for an in-stage order."""
        return cls("ack", stage, what)

    @property
    def acked(self) -> bool:
        """Ended by an ExecutionAck (the evidence of a probe comes with its ack)."""
        return self.kind != "gate"

    def __str__(self) -> str:
        if self.kind == "evidence":
            return "g0_evidence"
        text = f"{self.kind}:{self.name}"
        return f"{text}:{self.what}" if self.what else text

    @classmethod
    def parse(cls, text: str) -> Wait | None:
        """The wait a wire text names ("" for none); ValueError for anything else."""
        if not text:
            return None
        if text == "g0_evidence":
            return cls.evidence()
        kind, _, rest = text.partition(":")
        name, _, what = rest.partition(":")
        if kind == "gate" and name and not what:
            return cls.gate(name)
        if kind == "ack" and name:
            return cls.ack(name, what)
        raise ValueError(f"not a wait: {text!r}")
