"""The lifecycle table of docs/design.md §2: which stage may follow which, and which gate guards it."""

from __future__ import annotations

from types import MappingProxyType
from typing import TypeAlias

from contracts.config import KasminaConfig
from leyline import pb

__all__ = [
    "ACTIVE",
    "ALLOWED",
    "EXIT_GATE",
    "GUARD",
    "Gate",
    "Stage",
    "gate_name",
    "is_allowed",
    "stage_budget",
    "stage_name",
]

Stage: TypeAlias = pb.SeedLifecycleStage.ValueType
Gate: TypeAlias = pb.SeedLifecycleGate.ValueType

S = pb.SeedLifecycleStage
G = pb.SeedLifecycleGate

ALLOWED: MappingProxyType[Stage, frozenset[Stage]] = MappingProxyType(
    {
        pb.SEED_STAGE_UNKNOWN: frozenset({pb.SEED_STAGE_DORMANT}),
        pb.SEED_STAGE_DORMANT: frozenset({pb.SEED_STAGE_GERMINATED, pb.SEED_STAGE_TERMINATED}),
        pb.SEED_STAGE_GERMINATED: frozenset({pb.SEED_STAGE_TRAINING, pb.SEED_STAGE_CULLED}),
        pb.SEED_STAGE_TRAINING: frozenset({pb.SEED_STAGE_BLENDING, pb.SEED_STAGE_CULLED}),
        pb.SEED_STAGE_BLENDING: frozenset({pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_CULLED}),
        pb.SEED_STAGE_SHADOWING: frozenset({pb.SEED_STAGE_PROBATIONARY, pb.SEED_STAGE_CULLED}),
        pb.SEED_STAGE_PROBATIONARY: frozenset({pb.SEED_STAGE_FOSSILIZED, pb.SEED_STAGE_CULLED}),
        pb.SEED_STAGE_FOSSILIZED: frozenset({pb.SEED_STAGE_TERMINATED}),
        pb.SEED_STAGE_CULLED: frozenset({pb.SEED_STAGE_EMBARGOED}),
        pb.SEED_STAGE_EMBARGOED: frozenset({pb.SEED_STAGE_RESETTING}),
        pb.SEED_STAGE_RESETTING: frozenset({pb.SEED_STAGE_DORMANT}),
        pb.SEED_STAGE_TERMINATED: frozenset(),
    }
)
"""docs/design.md §2: from-stage -> the stages it may move to."""

GUARD: MappingProxyType[tuple[Stage, Stage], Gate] = MappingProxyType(
    {
        (pb.SEED_STAGE_DORMANT, pb.SEED_STAGE_GERMINATED): pb.SEED_GATE_G0_SANITY,
        (pb.SEED_STAGE_TRAINING, pb.SEED_STAGE_BLENDING): pb.SEED_GATE_G1_GRADIENT_HEALTH,
        (pb.SEED_STAGE_BLENDING, pb.SEED_STAGE_SHADOWING): pb.SEED_GATE_G2_STABILITY,
        (pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY): pb.SEED_GATE_G3_INTERFACE,
        (pb.SEED_STAGE_PROBATIONARY, pb.SEED_STAGE_FOSSILIZED): pb.SEED_GATE_G4_SYSTEM_IMPACT,
        (pb.SEED_STAGE_RESETTING, pb.SEED_STAGE_DORMANT): pb.SEED_GATE_G5_RESET,
    }
)
"""The gate whose pass is required for a transition."""

EXIT_GATE: MappingProxyType[Stage, tuple[Gate, Stage]] = MappingProxyType(
    {frm: (gate, to) for (frm, to), gate in GUARD.items()}
)
"""Stage -> (the gate that guards its exit, the stage that gate leads to)."""

ACTIVE: frozenset[Stage] = frozenset(
    {
        pb.SEED_STAGE_GERMINATED,
        pb.SEED_STAGE_TRAINING,
        pb.SEED_STAGE_BLENDING,
        pb.SEED_STAGE_SHADOWING,
        pb.SEED_STAGE_PROBATIONARY,
    }
)
"""Stages with a live, not yet permanent seed: these can be culled."""

IN_FORWARD: frozenset[Stage] = frozenset(
    {pb.SEED_STAGE_BLENDING, pb.SEED_STAGE_SHADOWING, pb.SEED_STAGE_PROBATIONARY}
)
"""Stages whose seed adds to the host's output (alpha above zero, not yet part of the host)."""

BARRIER_GATED: frozenset[Stage] = frozenset({*IN_FORWARD, pb.SEED_STAGE_FOSSILIZED})
"""Stages whose order changes the forward of every rank: it applies only after the commit of the
barrier it waits for (a cull of a seed in ``IN_FORWARD`` too, unless a safety verdict or an
emergency stop sent it)."""


def is_allowed(frm: Stage, to: Stage) -> bool:
    """True when the table allows ``frm -> to``."""
    return to in ALLOWED.get(frm, frozenset())


def stage_name(stage: int) -> str:
    """``SEED_STAGE_TRAINING`` -> ``TRAINING`` (``STAGE_<n>`` for unknown numbers)."""
    try:
        return S.Name(S.ValueType(stage)).removeprefix("SEED_STAGE_")
    except ValueError:
        return f"STAGE_{stage}"


def gate_name(gate: int) -> str:
    """``SEED_GATE_G1_GRADIENT_HEALTH`` -> ``G1_GRADIENT_HEALTH`` (``G<n>`` if unknown)."""
    try:
        return G.Name(G.ValueType(gate)).removeprefix("SEED_GATE_")
    except ValueError:
        return f"G{gate}"


def stage_budget(stage: Stage, config: KasminaConfig, blend_steps: int = 0) -> int | None:
    """Steps a stage runs before its exit gate is requested (None: no step budget).

    ``blend_steps`` is the germination's override of the blend ramp (0 = configured default).
    """
    lc = config.lifecycle
    if stage == pb.SEED_STAGE_TRAINING:
        return lc.training_steps
    if stage == pb.SEED_STAGE_BLENDING:
        return blend_steps or lc.blend_steps
    if stage == pb.SEED_STAGE_SHADOWING:
        return lc.shadowing_steps
    if stage == pb.SEED_STAGE_PROBATIONARY:
        return lc.probationary_steps
    return None
