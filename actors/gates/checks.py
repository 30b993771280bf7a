"""Gates G0-G5 as pure functions of evidence and thresholds (docs/design.md §3).

``evaluate`` lists every check of the gate with its measured value, threshold and comparator, so
a replay shows exactly why a gate passed or failed. A check whose evidence is absent fails with
``missing=True``; a non-finite measurement fails; a gate with no checks (unknown number) never
passes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from actors.gates.gains import (
    Unjudged,
    cf_gain_bound,
    cf_gain_detail,
    cost_detail,
    latency_floor_detail,
    latency_measure,
    net_gain_measure,
    regression,
    regression_detail,
    seed_gain_bound,
)
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb

__all__ = ["GATE_CHECKS", "describe_failures", "evaluate"]

G = pb.SeedLifecycleGate
_EPS = 1e-12

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    ">": lambda v, t: v > t,
    "==": lambda v, t: v == t,
}

# A check spec: (check name, how to measure from the metrics, comparator, threshold getter).
# A measure returns None when its evidence is missing, with the names of the missing metrics.
Measure = Callable[[Mapping[str, float], GateThresholds], tuple[float | None, tuple[str, ...]]]
Spec = tuple[str, Measure, str, Callable[[GateThresholds], float]]


def _metric(name: str) -> Measure:
    def measure(m: Mapping[str, float], t: GateThresholds) -> tuple[float | None, tuple[str, ...]]:
        return (m[name], ()) if name in m else (None, (name,))

    return measure


def _derived(names: tuple[str, ...], fn: Callable[..., float], *, config: bool = False) -> Measure:
    """A value computed from several metrics (and, with ``config``, the thresholds as first
    argument: confidence z and cost weights)."""

    def measure(m: Mapping[str, float], t: GateThresholds) -> tuple[float | None, tuple[str, ...]]:
        missing = tuple(n for n in names if n not in m)
        if missing:
            return None, missing
        values = [m[n] for n in names]
        return (fn(t, *values) if config else fn(*values)), ()

    return measure


def _flag(name: str) -> Spec:
    return (name, _metric(name), "==", lambda t: 1.0)


def _headroom(budget: float, in_use: float, request: float) -> float:
    """Bytes left of the rank's seed memory budget once the new seed is in (0 with no budget)."""
    return budget - in_use - request if budget > 0 else 0.0


def _memory_detail(m: Mapping[str, float], t: GateThresholds) -> str:
    budget = m[ev.SEED_MEMORY_BUDGET]
    limit = f"budget {budget:.0f} B" if budget > 0 else "no budget"
    return f"request {m[ev.SEED_MEMORY_REQUEST]:.0f} B + in use {m[ev.SEED_MEMORY_IN_USE]:.0f} B; {limit}"


def _relative_rise(off: float, on: float) -> float:
    return (on - off) / max(abs(off), _EPS)


GATE_CHECKS: dict[int, tuple[Spec, ...]] = {
    G.SEED_GATE_G0_SANITY: (
        _flag(ev.BLUEPRINT_KNOWN),
        _flag(ev.BLUEPRINT_SIGNED_OFF),
        _flag(ev.SLOT_FREE),
        (ev.SLOT_EMBARGOED, _metric(ev.SLOT_EMBARGOED), "==", lambda t: 0.0),
        _flag(ev.PARAMS_FINITE),
        _flag(ev.SHAPE_MATCH),
        _flag(ev.DTYPE_MATCH),
        (
            ev.GERMINATION_MAX_ABS_DELTA,
            _metric(ev.GERMINATION_MAX_ABS_DELTA),
            "<=",
            lambda t: t.germination_max_abs_delta,
        ),
        (ev.SEED_PARAMS, _metric(ev.SEED_PARAMS), "<=", lambda t: float(t.max_seed_params)),
        (
            ev.SEED_MEMORY_BYTES,
            _metric(ev.SEED_MEMORY_BYTES),
            "<=",
            lambda t: float(t.max_seed_memory_bytes),
        ),
        (
            "seed_memory_headroom",
            _derived(
                (ev.SEED_MEMORY_BUDGET, ev.SEED_MEMORY_IN_USE, ev.SEED_MEMORY_REQUEST), _headroom
            ),
            ">=",
            lambda t: 0.0,
        ),
    ),
    G.SEED_GATE_G1_GRADIENT_HEALTH: (
        (
            ev.TRAINING_STEPS,
            _metric(ev.TRAINING_STEPS),
            ">=",
            lambda t: float(t.min_training_steps),
        ),
        _flag(ev.GRAD_FINITE),
        (ev.GRAD_NORM_MIN, _metric(ev.GRAD_NORM_MIN), ">=", lambda t: t.grad_norm_vanishing),
        (ev.GRAD_NORM_MAX, _metric(ev.GRAD_NORM_MAX), "<=", lambda t: t.grad_norm_exploding),
        (
            ev.ISOLATION_VIOLATIONS,
            _metric(ev.ISOLATION_VIOLATIONS),
            "<=",
            lambda t: float(t.max_isolation_violations),
        ),
        (
            "seed_loss_gain_lcb",
            seed_gain_bound,
            ">",
            lambda t: t.min_seed_loss_improvement,
        ),
    ),
    G.SEED_GATE_G2_STABILITY: (
        (ev.ALPHA, _metric(ev.ALPHA), ">=", lambda t: t.alpha_complete),
        (ev.LOSS_SPIKE_SIGMA, _metric(ev.LOSS_SPIKE_SIGMA), "<=", lambda t: t.loss_spike_sigma),
        (ev.NONFINITE_COUNT, _metric(ev.NONFINITE_COUNT), "<=", lambda t: 0.0),
    ),
    G.SEED_GATE_G3_INTERFACE: (
        _flag(ev.OUTPUT_FINITE),
        (
            "seed_host_norm_ratio_min",
            _metric(ev.SEED_HOST_NORM_RATIO),
            ">=",
            lambda t: t.seed_host_norm_ratio_min,
        ),
        (
            "seed_host_norm_ratio_max",
            _metric(ev.SEED_HOST_NORM_RATIO),
            "<=",
            lambda t: t.seed_host_norm_ratio_max,
        ),
        (ev.LATENCY_OVERHEAD, latency_measure, "<=", lambda t: t.max_latency_overhead),
        (
            "cf_loss_worsening",
            _derived((ev.CF_LOSS_OFF, ev.CF_LOSS_ON), _relative_rise),
            "<=",
            lambda t: t.counterfactual_loss_tolerance,
        ),
    ),
    G.SEED_GATE_G4_SYSTEM_IMPACT: (
        ("cf_gain_lcb", cf_gain_bound, ">", lambda t: t.min_improvement),
        ("cf_net_gain", net_gain_measure, ">", lambda t: 0.0),
        ("baseline_regression", regression, "<=", lambda t: t.max_regression),
        (ev.OPEN_STRIKES, _metric(ev.OPEN_STRIKES), "<=", lambda t: float(t.max_open_strikes)),
    ),
    G.SEED_GATE_G5_RESET: (
        _flag(ev.MODULE_RELEASED),
        _flag(ev.HOOKS_RELEASED),
        _flag(ev.OPTIMIZER_RELEASED),
        (
            ev.RESET_MAX_ABS_DELTA,
            _metric(ev.RESET_MAX_ABS_DELTA),
            "<=",
            lambda t: t.reset_max_abs_delta,
        ),
    ),
}
"""Gate number -> its checks, in the order they are listed in a result.

Derived checks (docs/gates.md has the full table; :mod:`actors.gates.gains` measures the
gains): ``seed_loss_gain_lcb`` = seed_loss_gain - z * seed_loss_gain_se (the seed's paired
shadow-loss gain over alpha 0, lower bound at ``confidence_z``, with at least ``min_gain_pairs``
pairs) must exceed ``min_seed_loss_improvement``; ``cf_loss_worsening`` = (loss at α=1 - loss at
α=0) / |loss at α=0| must stay within ``counterfactual_loss_tolerance``; ``cf_gain_lcb`` (paired
per-example validation gain, α=1 vs α=0: the exact sign-test bound for class targets, else
cf_gain - z * cf_gain_se with at least ``min_gain_pairs`` pairs, over |cf_gain_base|: a fraction
of the seed-off loss) must exceed ``min_improvement``; ``cf_net_gain`` = cf_gain (over
|cf_gain_base| for a loss gain) - (param_cost * seed_params / host_params + latency_cost *
latency_overhead) must be positive; ``seed_memory_headroom`` = seed_memory_budget -
seed_memory_in_use - seed_memory_request must not be negative (0 when the rank has no budget);
``baseline_regression`` = baseline acc - current val acc (class targets; else the relative rise
of the validation loss over the host's at germination) must stay within ``max_regression``.
"""


def _bound_detail(mean: str, se: str, n: str, unit: str) -> Detail:
    def detail(m: Mapping[str, float], t: GateThresholds) -> str:
        size = f", n {m[n]:.0f} {unit}" if n in m else ""
        return f"mean {m[mean]:.6g} - z {t.confidence_z:g} x se {m[se]:.6g}{size}"

    return detail


_BOUND = re.compile(
    r"^mean (?P<mean>\S+) - z (?P<z>\S+) x se (?P<se>\S+)(?:, n (?P<n>\d+) \w+)?(?:; .*)?$"
)
_EXACT = re.compile(
    r"^mean (?P<mean>\S+), exact sign test at z (?P<z>\S+): .*?(?:, n (?P<n>\d+) \w+)?$"
)


def bound_parts(detail: str) -> tuple[float, float, float, float | None] | None:
    """``(mean, z, se, n)`` of a lower-bound check's detail (None if it is not one; se NaN for
    the exact test); the inverse of the detail written for ``seed_loss_gain_lcb`` and
    ``cf_gain_lcb``."""
    m = _BOUND.match(detail) or _EXACT.match(detail)
    if m is None:
        return None
    n = m.group("n")
    return (
        float(m.group("mean")),
        float(m.group("z")),
        float(m.group("se")) if "se" in m.groupdict() else math.nan,
        None if n is None else float(n),
    )


def _n_detail(statistic: str, n_key: str, unit: str) -> Detail:
    """A detail naming the statistic and its sample size (``n unknown`` if not reported)."""

    def detail(m: Mapping[str, float], t: GateThresholds) -> str:
        n = m.get(n_key)
        return f"{statistic}; n={n:.0f} {unit}" if n is not None else f"{statistic}; n unknown"

    return detail


Detail = Callable[[Mapping[str, float], GateThresholds], str]
_LATENCY_N = _n_detail(
    "best-of forward time, seed on over seed off, minus 1", ev.LATENCY_N, "timed pairs"
)


def _steps_detail(statistic: str) -> Detail:
    """A detail over the seed's gradient steps since germination, the finite ones
    (``grad_steps``) and the non-finite ones (``grad_nonfinite``) together."""

    def detail(m: Mapping[str, float], t: GateThresholds) -> str:
        if "grad_steps" not in m:
            return f"{statistic}; n unknown"
        n = m["grad_steps"] + m.get("grad_nonfinite", 0.0)
        return f"{statistic}; n={n:.0f} seed gradient steps"

    return detail


_GRAD_N = ("grad_steps", "finite seed gradient steps")  # (evidence name, unit) behind the norms
_DETAILS: dict[str, Detail] = {
    ev.GRAD_NORM_MIN: _n_detail("smallest finite seed gradient norm since germination", *_GRAD_N),
    ev.GRAD_NORM_MAX: _n_detail("largest finite seed gradient norm since germination", *_GRAD_N),
    ev.GRAD_FINITE: _steps_detail("1 if no seed gradient was non-finite"),
    ev.ISOLATION_VIOLATIONS: _n_detail(
        "seed writes of the host found (in place, or through a kept reference)",
        "isolation_probes",
        "isolation probes",
    ),
    ev.NONFINITE_COUNT: _steps_detail(
        "non-finite seed outputs (forwards) and gradients (steps) since germination"
    ),
    ev.OUTPUT_FINITE: _steps_detail("1 if no seed output was non-finite since germination"),
    ev.TRAINING_STEPS: lambda m, t: "seed optimizer steps in TRAINING",
    ev.OPEN_STRIKES: lambda m, t: "circuit-breaker strikes against this seed since germination",
    ev.LOSS_SPIKE_SIGMA: _n_detail(
        "rise of the training loss (mean over a quarter of the stage) over its level before "
        "the stage, in standard errors",
        ev.LOSS_SPIKE_N,
        "stage losses",
    ),
    "seed_host_norm_ratio_min": _n_detail(
        "|seed output| / |host output| at the slot", ev.SEED_HOST_NORM_N, "probe examples"
    ),
    "seed_host_norm_ratio_max": _n_detail(
        "|seed output| / |host output| at the slot", ev.SEED_HOST_NORM_N, "probe examples"
    ),
    ev.LATENCY_OVERHEAD: lambda m, t: _LATENCY_N(m, t) + latency_floor_detail(m, t),
    "cf_loss_worsening": lambda m, t: (
        _n_detail(
            "validation loss at alpha 1 over alpha 0, minus 1",
            ev.CF_LOSS_N,
            "validation losses (examples; batches for a batch-mean loss)",
        )(m, t)
        if ev.CF_LOSS_N in m
        else "validation loss at alpha 1 over alpha 0, minus 1; measured by the trainer's evaluate"
    ),
    "seed_loss_gain_lcb": _bound_detail(
        ev.SEED_LOSS_GAIN, ev.SEED_LOSS_GAIN_SE, ev.SEED_LOSS_GAIN_N, "pairs"
    ),
    "cf_gain_lcb": cf_gain_detail,
    "cf_net_gain": cost_detail,
    "baseline_regression": regression_detail,
    "seed_memory_headroom": _memory_detail,
}
"""Checks whose ``detail`` spells out their statistic (components and sample size)."""


def _check(spec: Spec, metrics: Mapping[str, float], thresholds: GateThresholds) -> pb.GateCheck:
    name, measure, comparator, threshold_of = spec
    threshold = threshold_of(thresholds)
    check = pb.GateCheck(name=name, threshold=threshold, comparator=comparator)
    try:
        value, missing = measure(metrics, thresholds)
    except Unjudged as exc:  # present but not enough to judge: fails, saying why
        check.detail = str(exc)
        return check
    if value is None:
        check.missing = True
        check.detail = "missing evidence: " + ", ".join(missing)
        return check
    if not math.isfinite(value):  # the result must stay deliverable: no non-finite value in it
        check.detail = "non-finite measurement"
        return check
    check.value = value
    if name in _DETAILS:
        check.detail = _DETAILS[name](metrics, thresholds)
    check.passed = _COMPARE[comparator](value, threshold)
    return check


def evaluate(gate: int, evidence: pb.Evidence, thresholds: GateThresholds) -> pb.GateResult:
    """Judge ``evidence`` for ``gate``; the result lists every check (request id/slot/step unset)."""
    result = pb.GateResult(gate=pb.SeedLifecycleGate.ValueType(gate))
    specs = GATE_CHECKS.get(gate)
    if specs is None:
        result.checks.append(
            pb.GateCheck(
                name="gate_known",
                value=float(gate),
                comparator="in",
                detail=f"unknown gate number {gate}",
            )
        )
        result.reason = f"unknown gate {gate}"
        return result
    metrics = dict(evidence.metrics)
    result.checks.extend(_check(spec, metrics, thresholds) for spec in specs)
    result.passed = bool(result.checks) and all(c.passed for c in result.checks)
    result.reason = "all checks passed" if result.passed else describe_failures(result)
    return result


_UNMEASURED = ("non-finite measurement", "too few pairs", "inconsistent counts", "fixes, breaks")


def describe_failures(result: pb.GateResult) -> str:
    """One line naming every failing check with its value and threshold."""
    parts = []
    for c in result.checks:
        if c.passed:
            continue
        if c.missing:
            parts.append(f"{c.name} missing")
        elif c.detail.startswith(_UNMEASURED):
            parts.append(f"{c.name} ({c.detail})")
        elif c.comparator not in _COMPARE:
            parts.append(f"{c.name}={c.value:g} ({c.detail})")
        elif c.detail:
            parts.append(f"{c.name}={c.value:g} (needs {c.comparator} {c.threshold:g}; {c.detail})")
        else:
            parts.append(f"{c.name}={c.value:g} (needs {c.comparator} {c.threshold:g})")
    return "; ".join(parts) if parts else result.reason or "no checks"
