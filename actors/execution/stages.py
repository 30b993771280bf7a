"""Stage names, forward modes and alpha schedules (pure, no torch state)."""

from __future__ import annotations

import math
from enum import Enum

from leyline import pb

DORMANT = pb.SEED_STAGE_DORMANT
GERMINATED = pb.SEED_STAGE_GERMINATED
TRAINING = pb.SEED_STAGE_TRAINING
BLENDING = pb.SEED_STAGE_BLENDING
SHADOWING = pb.SEED_STAGE_SHADOWING
PROBATIONARY = pb.SEED_STAGE_PROBATIONARY
FOSSILIZED = pb.SEED_STAGE_FOSSILIZED
CULLED = pb.SEED_STAGE_CULLED
EMBARGOED = pb.SEED_STAGE_EMBARGOED
RESETTING = pb.SEED_STAGE_RESETTING
TERMINATED = pb.SEED_STAGE_TERMINATED

#: stages in which the seed is trained by execution (its own optimizer, isolated input)
ISOLATED_STAGES = frozenset({TRAINING, BLENDING, SHADOWING, PROBATIONARY})
#: stages in which the slot holds no seed (released or never built)
EMPTY_STAGES = frozenset({DORMANT, CULLED, EMBARGOED, RESETTING})


class Mode(Enum):
    """What the slot's forward computes; one compiled graph per value."""

    IDENTITY = "identity"  # out = h
    TRAINING = "training"  # z = s(h.detach()); out = h - (z.detach() - z)
    RESIDUAL = "residual"  # out = h + a * s(h.detach())
    CONVEX = "convex"  # out = lerp(h, h.detach() + s(h.detach()), a)
    FOSSIL = "fossil"  # out = h + s(h)


def stage_name(stage: int) -> str:
    """The short name of a lifecycle stage (``TRAINING``)."""
    return pb.SeedLifecycleStage.Name(stage).removeprefix("SEED_STAGE_")  # type: ignore[arg-type]


def mode_for(stage: int, blend_mode: int, fossil: bool) -> Mode:
    """The forward mode of a slot in ``stage`` (a fossilized seed stays in the forward for good)."""
    if fossil:
        return Mode.FOSSIL
    if stage == TRAINING:
        return Mode.TRAINING
    if stage in (BLENDING, SHADOWING, PROBATIONARY):
        return Mode.CONVEX if blend_mode == pb.BLEND_MODE_CONVEX else Mode.RESIDUAL
    return Mode.IDENTITY


_SIGMOID_K = 10.0


def alpha_at(schedule: int, t: int, blend_steps: int) -> float:
    """Alpha after ``t`` steps of a ``blend_steps`` ramp: 0 at t=0, exactly 1 from t>=blend_steps."""
    if blend_steps <= 0 or t >= blend_steps:
        return 1.0
    if t <= 0:
        return 0.0
    p = t / blend_steps
    if schedule == pb.ALPHA_SCHEDULE_COSINE:
        return 0.5 * (1.0 - math.cos(math.pi * p))
    if schedule == pb.ALPHA_SCHEDULE_SIGMOID:
        lo = 1.0 / (1.0 + math.exp(_SIGMOID_K / 2))
        hi = 1.0 / (1.0 + math.exp(-_SIGMOID_K / 2))
        v = 1.0 / (1.0 + math.exp(-_SIGMOID_K * (p - 0.5)))
        return min(1.0, max(0.0, (v - lo) / (hi - lo)))
    return p


def adaptive_clip(alpha: float) -> float:
    """Seed gradient-norm clip while blending: ``0.1 / (1 + 100 (alpha - 0.5)^2)``."""
    return 0.1 / (1.0 + 100.0 * (alpha - 0.5) ** 2)


#: alpha hysteresis: the blend phases (the seed's learning hand-over while BLENDING)
EARLY, MID, LATE = 0, 1, 2
PHASE_NAMES = ("early", "mid", "late")
ALPHA_BANDS = (0.3, 0.7)  # the design's band centres
ALPHA_HYSTERESIS = 0.02  # half-width of each band


def blend_phase(phase: int, alpha: float, width: float = ALPHA_HYSTERESIS) -> int:
    """The blend phase once alpha is ``alpha``, coming from ``phase`` (alpha hysteresis).

    Each band centre ``c`` (0.3, 0.7) is crossed upward only when ``alpha >= c + width`` and
    downward only when ``alpha <= c - width``; inside ``(c - width, c + width)`` the phase stays
    what it was, so alpha hovering at a band edge never flips the phase back and forth. A jump
    may cross both bands at once."""
    p = min(max(phase, EARLY), LATE)
    while p < LATE and alpha >= round(ALPHA_BANDS[p] + width, 9):  # round: 0.7 - 0.02 is 0.68
        p += 1
    while p > EARLY and alpha <= round(ALPHA_BANDS[p - 1] - width, 9):
        p -= 1
    return p


def phase_of(alpha: float) -> int:
    """The phase of ``alpha`` with no history (after a restore): the nearest band side."""
    return sum(alpha >= c for c in ALPHA_BANDS)
