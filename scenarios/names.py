"""Names a scenario file uses: stages, gates, slots and actors, validated and normalised."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from contracts import streams
from leyline import pb

__all__ = [
    "ALL_SLOTS",
    "ActorName",
    "GateName",
    "SlotName",
    "StageName",
    "gate_number",
    "slot_or_all",
    "stage_number",
]

ALL_SLOTS = "*"  # a command sent to every slot
_SINGLETONS = ("gate", "safety", "telemetry", "barrier")


def stage_number(name: str) -> int:
    """``"FOSSILIZED"`` (any case, ``SEED_STAGE_`` prefix optional) -> the enum value."""
    key = name.strip().upper().removeprefix("SEED_STAGE_")
    try:
        return int(pb.SeedLifecycleStage.Value(f"SEED_STAGE_{key}"))
    except ValueError:
        names = [n.removeprefix("SEED_STAGE_") for n, _ in pb.SeedLifecycleStage.items()][1:]
        raise ValueError(f"unknown stage {name!r}: use one of {', '.join(names)}") from None


def gate_number(name: str) -> int:
    """``"G2"`` or ``"G2_STABILITY"`` (any case) -> the enum value."""
    key = name.strip().upper().removeprefix("SEED_GATE_")
    for full, value in pb.SeedLifecycleGate.items():
        short = full.removeprefix("SEED_GATE_")
        if key in (short, short.split("_")[0]):
            return int(value)
    raise ValueError(f"unknown gate {name!r}: use G0 … G5")


def _stage(value: str) -> str:
    stage_number(value)
    return value.strip().upper().removeprefix("SEED_STAGE_")


def _gate(value: str) -> str:
    return pb.SeedLifecycleGate.Name(pb.SeedLifecycleGate.ValueType(gate_number(value)))[10:12]


def slot_or_all(value: str) -> str:
    """A valid slot id, or ``*`` (every slot of the scenario)."""
    return value if value == ALL_SLOTS else streams.check_slot(value)


def _actor(value: str) -> str:
    kind, _, key = value.partition(":")
    if value in _SINGLETONS or (kind == "seed" and key):
        return value
    if kind == "execution" and key.isdigit():
        return value
    raise ValueError(
        f"unknown actor {value!r}: use seed:<slot>, gate, safety, telemetry, barrier "
        "or execution:<rank>"
    )


StageName = Annotated[str, AfterValidator(_stage)]
GateName = Annotated[str, AfterValidator(_gate)]
SlotName = Annotated[str, AfterValidator(streams.check_slot)]
ActorName = Annotated[str, AfterValidator(_actor)]
