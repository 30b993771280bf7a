"""Bounds on what a command may ask of a seed, checked by the SeedActor before any order goes out.

A holder of a controller key can still send nonsense (``lr=-1``, ``hidden=1e12``): the SeedActor
refuses it with a reason instead of ordering execution to build or train it. Each known parameter
has a range; any other blueprint parameter must be finite and of moderate size. The seed's
parameter count against the slot's shape is judged again by execution before it allocates.
"""

from __future__ import annotations

import math
import re

from leyline import pb

__all__ = ["MAX_PARAMS", "RANGES", "check_adjust", "check_germinate"]

MAX_PARAMS = 32  # entries in a germinate's params map
MAX_BLEND_STEPS = 1_000_000
ARTIFACT_ID = re.compile(r"^[0-9a-f]{64}$")  # the sha256 of an artifact's manifest
_OTHER = 1e6  # |value| bound for a parameter without a range of its own

#: name -> (low, high, integer): inclusive bounds (those in POSITIVE must also be > 0).
RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, 1.0, False),
    "weight_decay": (0.0, 1.0, False),
    "hidden": (1, 65_536, True),
    "width": (1, 65_536, True),
    "rank": (1, 4_096, True),
    "scale": (-1_000.0, 1_000.0, False),
    "kd_weight": (0.0, 1.0, False),  # knowledge distillation: weight of the soft term
    "kd_temperature": (0.0, 100.0, False),  # knowledge distillation: temperature
}
#: parameters that must also be > 0
POSITIVE = frozenset({"lr", "kd_temperature"})


def _check(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"parameter {name}={value} is not finite"
    bounds = RANGES.get(name)
    if bounds is None:
        return None if abs(value) <= _OTHER else f"parameter {name}={value:g} out of range"
    low, high, integer = bounds
    if not low <= value <= high or (name in POSITIVE and value <= 0):
        return f"parameter {name}={value:g} outside [{low:g}, {high:g}]"
    if integer and value != int(value):
        return f"parameter {name}={value:g} must be a whole number"
    return None


def check_germinate(g: pb.Germinate) -> str | None:
    """Why ``g`` is refused, or None when every parameter is within bounds."""
    if len(g.params) > MAX_PARAMS:
        return f"{len(g.params)} parameters (at most {MAX_PARAMS})"
    if g.artifact_id and not ARTIFACT_ID.match(g.artifact_id):
        return f"artifact_id {g.artifact_id[:80]!r} is not 64 lowercase hex digits"
    if g.blend_steps > MAX_BLEND_STEPS:
        return f"blend_steps={g.blend_steps} (at most {MAX_BLEND_STEPS})"
    for name in sorted(g.params):
        if len(name) > 64:
            return "parameter name longer than 64 characters"
        reason = _check(name, g.params[name])
        if reason is not None:
            return reason
    return None


def check_adjust(a: pb.AdjustOptimizer) -> str | None:
    """Why an optimizer adjustment is refused, or None."""
    if not math.isfinite(a.lr_scale) or not 0 <= a.lr_scale <= 100:  # 0 means unchanged
        return f"lr_scale={a.lr_scale:g} outside [0, 100]"
    if not math.isfinite(a.weight_decay) or a.weight_decay > 1:  # < 0 means unchanged
        return f"weight_decay={a.weight_decay:g} above 1"
    return None
