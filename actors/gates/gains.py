"""How G1 and G4 measure a seed's gain: the lower confidence bounds, the baseline regression
and the seed's cost (docs/gates.md).

G4 weighs a loss gain (non-class targets) as a fraction of the seed-off arm's loss
(``cf_gain_base``): the verdict depends neither on the units of the targets nor on the loss
reduction, and ``min_improvement`` and the costs mean the same fraction on every task.

A continuous (loss) gain is judged on the normal bound ``mean - z * se``, but only with at least
``min_gain_pairs`` pairs; a class target's 0/±1 gain on the exact sign test of its discordant
examples (:mod:`actors.gates.stats`). A measure returns ``(value, missing)``: ``None`` and the
names of the absent metrics when evidence is missing; it raises :class:`Unjudged` when the
evidence is present but cannot support a verdict (too few pairs, inconsistent counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from actors.gates.stats import exact_gain_lcb, tail_level
from contracts import evidence as ev
from contracts.config import GateThresholds

__all__ = [
    "Unjudged",
    "cf_gain_bound",
    "cf_gain_detail",
    "cost_detail",
    "net_gain",
    "net_gain_measure",
    "regression",
    "regression_detail",
    "seed_gain_bound",
]

_EPS = 1e-12
Measured = tuple[float | None, tuple[str, ...]]


class Unjudged(Exception):
    """The evidence is present but cannot support a verdict: the check fails with this detail."""


def _absent(m: Mapping[str, float], names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n in names if n not in m)


def on_loss(m: Mapping[str, float]) -> bool:
    """The validation gain is a loss decrease (a non-class target), not an accuracy gain."""
    return m.get(ev.CF_GAIN_ON_LOSS) == 1.0


def _normal_bound(
    m: Mapping[str, float], t: GateThresholds, names: tuple[str, str, str]
) -> Measured:
    """``mean - z * se`` of a continuous paired gain with at least ``min_gain_pairs`` pairs."""
    mean, se, n = names
    missing = _absent(m, (mean, n))
    if missing:
        return None, missing
    if math.isfinite(m[n]) and m[n] < t.min_gain_pairs:
        raise Unjudged(f"too few pairs: n {m[n]:.0f} < min_gain_pairs {t.min_gain_pairs}")
    if se not in m:
        return None, (se,)
    return m[mean] - t.confidence_z * m[se], ()


def seed_gain_bound(m: Mapping[str, float], t: GateThresholds) -> Measured:
    """G1: the lower bound of the seed's own paired shadow-loss gain."""
    return _normal_bound(m, t, (ev.SEED_LOSS_GAIN, ev.SEED_LOSS_GAIN_SE, ev.SEED_LOSS_GAIN_N))


def _counts(m: Mapping[str, float]) -> tuple[int, int, int]:
    """``(fixes, breaks, n)`` of a class target's paired gain, checked to be counts."""
    fixes, breaks, n = m[ev.CF_GAIN_FIXES], m[ev.CF_GAIN_BREAKS], m[ev.CF_GAIN_N]
    if not all(math.isfinite(v) and v >= 0 and v == int(v) for v in (fixes, breaks, n)):
        raise Unjudged("fixes, breaks and n must be counts")
    if fixes + breaks > n:
        raise Unjudged(f"inconsistent counts: {fixes:.0f} fixes + {breaks:.0f} breaks > n {n:.0f}")
    return int(fixes), int(breaks), int(n)


def _scale(m: Mapping[str, float]) -> tuple[float, tuple[str, ...]]:
    """The factor that puts a G4 gain in its judged units: 1 for class targets (accuracy), and
    ``1 / |cf_gain_base|`` for a loss gain (a fraction of the seed-off loss)."""
    if not on_loss(m):
        return 1.0, ()
    if ev.CF_GAIN_BASE not in m:
        return math.nan, (ev.CF_GAIN_BASE,)
    return 1.0 / max(abs(m[ev.CF_GAIN_BASE]), _EPS), ()


def cf_gain_bound(m: Mapping[str, float], t: GateThresholds) -> Measured:
    """G4: the lower bound of the paired validation gain (exact for a class target; for a loss
    gain, as a fraction of the seed-off loss)."""
    if on_loss(m):
        bound, missing = _normal_bound(m, t, (ev.CF_GAIN, ev.CF_GAIN_SE, ev.CF_GAIN_N))
        scale, absent = _scale(m)
        if missing or absent or bound is None:
            return None, missing + absent
        return bound * scale, ()
    missing = _absent(m, (ev.CF_GAIN_N, ev.CF_GAIN_FIXES, ev.CF_GAIN_BREAKS))
    if missing:
        return None, missing
    fixes, breaks, n = _counts(m)
    return exact_gain_lcb(fixes, breaks, n, tail_level(t.confidence_z))[0], ()


def _loss_scale_detail(m: Mapping[str, float]) -> str:
    """How a loss gain became a fraction: the loss gain, its se and the seed-off loss."""
    se = m.get(ev.CF_GAIN_SE, math.inf)
    return (
        f"; as a fraction of the seed-off loss {m[ev.CF_GAIN_BASE]:.6g} "
        f"(loss gain {m[ev.CF_GAIN]:.6g}, se {se:.6g})"
    )


def cf_gain_detail(m: Mapping[str, float], t: GateThresholds) -> str:
    """The bound's components: mean, z, se and n (and, exact, the fixes and breaks)."""
    n = f", n {m[ev.CF_GAIN_N]:.0f} examples" if ev.CF_GAIN_N in m else ""
    if on_loss(m):
        scale, _ = _scale(m)
        se = m.get(ev.CF_GAIN_SE, math.inf) * scale
        bound = f"mean {m[ev.CF_GAIN] * scale:.6g} - z {t.confidence_z:g} x se {se:.6g}"
        return f"{bound}{n}".replace(" examples", " pairs") + _loss_scale_detail(m)
    fixes, breaks, size = _counts(m)
    _, p_lo = exact_gain_lcb(fixes, breaks, size, tail_level(t.confidence_z))
    mean = (fixes - breaks) / size if size else 0.0
    return (
        f"mean {mean:.6g}, exact sign test at z {t.confidence_z:g}: {fixes} fixes, "
        f"{breaks} breaks, fix rate >= {p_lo:.4g}{n}"
    )


def regression(m: Mapping[str, float], t: GateThresholds) -> Measured:
    """Baseline regression: accuracy lost since germination (class targets), else the relative
    rise of the validation loss (seed on) over the host's at germination."""
    if on_loss(m):
        missing = _absent(m, (ev.BASELINE_LOSS, ev.VAL_LOSS))
        if missing:
            return None, missing
        base = m[ev.BASELINE_LOSS]
        return (m[ev.VAL_LOSS] - base) / max(abs(base), _EPS), ()
    missing = _absent(m, (ev.BASELINE_ACC, ev.VAL_ACC))
    if missing:
        return None, missing
    return m[ev.BASELINE_ACC] - m[ev.VAL_ACC], ()


def regression_detail(m: Mapping[str, float], t: GateThresholds) -> str:
    """What the regression compares."""
    if on_loss(m):
        return (
            f"validation loss {m[ev.VAL_LOSS]:.6g} (seed on) over {m[ev.BASELINE_LOSS]:.6g} "
            "(host at germination), minus 1"
        )
    return f"accuracy {m[ev.BASELINE_ACC]:.6g} at germination - {m[ev.VAL_ACC]:.6g} now"


def counted_latency(m: Mapping[str, float], t: GateThresholds) -> float:
    """The relative latency overhead the gates count: 0 when the seed adds at most
    ``latency_floor_us`` per probe forward (``latency_added_us``, where measured), else
    ``latency_overhead``."""
    added = m.get(ev.LATENCY_ADDED_US)
    if added is not None and math.isfinite(added) and added <= t.latency_floor_us:
        return 0.0
    return m[ev.LATENCY_OVERHEAD]


def latency_measure(m: Mapping[str, float], t: GateThresholds) -> Measured:
    """G3: the counted latency overhead (:func:`counted_latency`)."""
    if ev.LATENCY_OVERHEAD not in m:
        return None, (ev.LATENCY_OVERHEAD,)
    return counted_latency(m, t), ()


def latency_floor_detail(m: Mapping[str, float], t: GateThresholds) -> str:
    """The time the seed adds per forward against the floor ("" where it was not measured)."""
    added = m.get(ev.LATENCY_ADDED_US)
    if added is None:
        return ""
    side = "within" if counted_latency(m, t) == 0.0 else "over"
    return (
        f"; {added:.0f} µs added per forward, {side} the {t.latency_floor_us:.0f} µs floor "
        f"(relative overhead {m[ev.LATENCY_OVERHEAD]:.4g})"
    )


def _seed_cost(t: GateThresholds, seed_params: float, host_params: float, latency: float) -> float:
    """What a seed costs, in gain units: ``param_cost * seed_params / host_params +
    latency_cost * latency_overhead``; NaN (a failed check) when an input is not finite."""
    if not all(math.isfinite(v) for v in (seed_params, host_params, latency)):
        return math.nan
    return t.param_cost * seed_params / max(host_params, 1.0) + t.latency_cost * max(latency, 0.0)


def net_gain(
    t: GateThresholds, gain: float, seed_params: float, host_params: float, latency: float
) -> float:
    """The gain less the seed's cost."""
    return gain - _seed_cost(t, seed_params, host_params, latency)


_COST = (ev.CF_GAIN, ev.SEED_PARAMS, ev.HOST_PARAMS, ev.LATENCY_OVERHEAD)


def net_gain_measure(m: Mapping[str, float], t: GateThresholds) -> Measured:
    """G4: the validation gain in its judged units (accuracy, or the fraction of the seed-off
    loss) less the seed's cost."""
    missing = _absent(m, _COST)
    scale, absent = _scale(m)
    if missing or absent:
        return None, missing + absent
    gain, seed, host = (m[name] for name in _COST[:3])
    return net_gain(t, gain * scale, seed, host, counted_latency(m, t)), ()


def cost_detail(m: Mapping[str, float], t: GateThresholds) -> str:
    """The gain and the cost's parts."""
    seed, host, latency = m[ev.SEED_PARAMS], m[ev.HOST_PARAMS], counted_latency(m, t)
    params = t.param_cost * seed / max(host, 1.0)
    lat = t.latency_cost * max(latency, 0.0)
    scale, _ = _scale(m)
    rel = _loss_scale_detail(m).replace("; as", " as") if on_loss(m) else ""
    return (
        f"gain {m[ev.CF_GAIN] * scale:.4g}{rel} - cost {params + lat:.4g} (parameters "
        f"{params:.4g}: {seed:.0f} seed / {host:.0f} host; latency {lat:.4g})"
    )
