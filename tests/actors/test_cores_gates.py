"""Gates G0-G5: each check just met passes, just missed fails, missing evidence fails."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from cores_harness import PASSING

from actors import gates
from actors.core import Context
from actors.gates import GATE_CHECKS, evaluate
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb

# Thresholds that are exact binary fractions, so derived values compare exactly.
T = GateThresholds(
    min_seed_loss_improvement=0.25,
    counterfactual_loss_tolerance=0.25,
    min_improvement=0.125,
    max_regression=0.25,
    confidence_z=2.0,
    param_cost=0.25,
    latency_cost=0.5,
)
D = 2.0**-10

BASE = {gate: dict(metrics) for gate, metrics in PASSING.items()}
BASE[pb.SEED_GATE_G0_SANITY].update({ev.SLOT_FREE: 1.0, ev.SLOT_EMBARGOED: 0.0})
# a loss gain (non-class target): the normal bound, and the loss against the host's baseline
BASE[pb.SEED_GATE_G4_SYSTEM_IMPACT] = {
    ev.CF_GAIN: 0.5,
    ev.CF_GAIN_SE: 0.0625,
    ev.CF_GAIN_N: 1000.0,
    ev.CF_GAIN_ON_LOSS: 1.0,
    ev.CF_GAIN_BASE: 1.0,
    ev.SEED_PARAMS: 100.0,
    ev.HOST_PARAMS: 400.0,
    ev.LATENCY_OVERHEAD: 0.25,
    ev.BASELINE_LOSS: 1.0,
    ev.VAL_LOSS: 0.75,
    ev.OPEN_STRIKES: 0.0,
}

Setter = Callable[[float], dict[str, float]]
SETTERS: dict[str, Setter] = {
    # lower bound = gain - z * se with z = 2 and se = 1/16
    "seed_loss_gain_lcb": lambda v: {ev.SEED_LOSS_GAIN: v + 0.125, ev.SEED_LOSS_GAIN_SE: 0.0625},
    "seed_host_norm_ratio_min": lambda v: {ev.SEED_HOST_NORM_RATIO: v},
    "seed_host_norm_ratio_max": lambda v: {ev.SEED_HOST_NORM_RATIO: v},
    "cf_loss_worsening": lambda v: {ev.CF_LOSS_OFF: 1.0, ev.CF_LOSS_ON: 1.0 + v},
    "cf_gain_lcb": lambda v: {ev.CF_GAIN: v + 0.125, ev.CF_GAIN_SE: 0.0625},
    # cost = 0.25 * 100 / 400 + 0.5 * 0.25 = 0.1875
    "cf_net_gain": lambda v: {ev.CF_GAIN: v + 0.1875, ev.CF_GAIN_SE: 0.0},
    # relative rise of the validation loss over the host's baseline
    "baseline_regression": lambda v: {ev.BASELINE_LOSS: 1.0, ev.VAL_LOSS: 1.0 + v},
    # headroom = budget - in use - request
    "seed_memory_headroom": lambda v: {
        ev.SEED_MEMORY_BUDGET: 2048.0 + v,
        ev.SEED_MEMORY_IN_USE: 1024.0,
        ev.SEED_MEMORY_REQUEST: 1024.0,
    },
}
INPUTS: dict[str, tuple[str, ...]] = {
    "seed_loss_gain_lcb": (ev.SEED_LOSS_GAIN, ev.SEED_LOSS_GAIN_SE),
    "seed_host_norm_ratio_min": (ev.SEED_HOST_NORM_RATIO,),
    "seed_host_norm_ratio_max": (ev.SEED_HOST_NORM_RATIO,),
    "cf_loss_worsening": (ev.CF_LOSS_OFF, ev.CF_LOSS_ON),
    "cf_gain_lcb": (ev.CF_GAIN, ev.CF_GAIN_SE),
    "cf_net_gain": (ev.CF_GAIN, ev.SEED_PARAMS, ev.HOST_PARAMS, ev.LATENCY_OVERHEAD),
    "baseline_regression": (ev.VAL_LOSS, ev.BASELINE_LOSS),
    "seed_memory_headroom": (ev.SEED_MEMORY_BUDGET, ev.SEED_MEMORY_IN_USE, ev.SEED_MEMORY_REQUEST),
}

CASES = [
    pytest.param(gate, spec[0], spec[2], spec[3](T), id=f"G{gate}-{spec[0]}")
    for gate, specs in GATE_CHECKS.items()
    for spec in specs
]


def _judge(gate: int, name: str, value: float) -> tuple[pb.GateResult, pb.GateCheck]:
    metrics = dict(BASE[gate])
    setter = SETTERS.get(name)
    metrics.update(setter(value) if setter is not None else {name: value})
    result = evaluate(gate, pb.Evidence(metrics=metrics), T)
    return result, next(c for c in result.checks if c.name == name)


def test_base_evidence_passes_every_gate() -> None:
    """The reference evidence passes each gate, and every check is listed."""
    for gate, specs in GATE_CHECKS.items():
        result = evaluate(gate, pb.Evidence(metrics=BASE[gate]), T)
        assert result.passed, result.reason
        assert [c.name for c in result.checks] == [s[0] for s in specs]


@pytest.mark.parametrize(("gate", "name", "comparator", "threshold"), CASES)
def test_threshold_just_met_passes(gate: int, name: str, comparator: str, threshold: float) -> None:
    """A measurement exactly at the threshold (just above it for '>') passes its check."""
    value = threshold + D if comparator == ">" else threshold
    result, check = _judge(gate, name, value)
    assert check.passed and result.passed
    assert (check.value, check.threshold, check.comparator) == (value, threshold, comparator)


@pytest.mark.parametrize(("gate", "name", "comparator", "threshold"), CASES)
def test_threshold_just_missed_fails(
    gate: int, name: str, comparator: str, threshold: float
) -> None:
    """A measurement just on the wrong side of the threshold fails its check and the gate."""
    value = {
        ">=": threshold - D,
        "<=": threshold + D,
        ">": threshold,
        "==": 0.0 if threshold == 1.0 else 1.0,
    }[comparator]
    result, check = _judge(gate, name, value)
    assert not check.passed and not check.missing and not result.passed
    assert (check.value, check.threshold) == (value, threshold)
    assert name in result.reason


@pytest.mark.parametrize(("gate", "name", "comparator", "threshold"), CASES)
def test_missing_evidence_fails_with_reason(
    gate: int, name: str, comparator: str, threshold: float
) -> None:
    """Absent evidence fails the check with missing=True and names the absent metric."""
    metrics = {k: v for k, v in BASE[gate].items() if k not in INPUTS.get(name, (name,))}
    result = evaluate(gate, pb.Evidence(metrics=metrics), T)
    check = next(c for c in result.checks if c.name == name)
    assert check.missing and not check.passed and not result.passed
    assert INPUTS.get(name, (name,))[0] in check.detail


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_measurement_fails(bad: float) -> None:
    """NaN or infinite measurements fail, whatever the comparator."""
    for name in (ev.TRAINING_STEPS, ev.GRAD_NORM_MAX):
        result, check = _judge(pb.SEED_GATE_G1_GRADIENT_HEALTH, name, bad)
        assert not check.passed and not result.passed


@pytest.mark.parametrize("gate", [6, 7, 42])
def test_unknown_gate_never_passes(gate: int) -> None:
    """An unknown gate number fails, even with every known metric present."""
    everything = {k: v for metrics in BASE.values() for k, v in metrics.items()}
    result = evaluate(gate, pb.Evidence(metrics=everything), T)
    assert not result.passed and result.gate == gate and "unknown gate" in result.reason


def test_gate_actor_decide_answers_the_slot() -> None:
    """decide(GateRequest) -> a GateResult event, also sent to the requesting slot's inbox."""
    request = pb.GateRequest(
        request_id="r1",
        slot="s",
        gate=pb.SEED_GATE_G2_STABILITY,
        step=9,
        evidence=pb.Evidence(metrics=BASE[pb.SEED_GATE_G2_STABILITY]),
    )
    d = gates.decide(gates.initial_state(), request, Context())
    (result,) = d.events
    assert isinstance(result, pb.GateResult)
    assert (result.request_id, result.slot, result.step, result.passed) == ("r1", "s", 9, True)
    assert d.outgoing[0].to == "seed" and d.outgoing[0].key == "s"
    state = gates.evolve(gates.initial_state(), result)
    assert (state.evaluated, state.passed) == (1, 1)
    assert gates.decide(state, pb.Heartbeat(), Context()).rejected


def test_statistical_checks_state_their_components_and_sample_size() -> None:
    """G1/G4 bounds name mean, z, se and n in their detail; the cost check names its parts."""
    metrics = dict(BASE[pb.SEED_GATE_G4_SYSTEM_IMPACT], **{ev.CF_GAIN: 0.0, ev.CF_GAIN_SE: 0.0})
    metrics[ev.CF_GAIN_N] = 288.0
    result = evaluate(pb.SEED_GATE_G4_SYSTEM_IMPACT, pb.Evidence(metrics=metrics), T)
    checks = {c.name: c for c in result.checks}
    assert not result.passed and checks["cf_gain_lcb"].value == 0.0
    assert checks["cf_gain_lcb"].detail == (
        "mean 0 - z 2 x se 0, n 288 pairs; as a fraction of the seed-off loss 1 (loss gain 0, se 0)"
    )
    assert checks["cf_net_gain"].value == -0.1875
    assert "cost 0.1875" in checks["cf_net_gain"].detail and "100 seed / 400 host" in (
        checks["cf_net_gain"].detail
    )
    assert "cf_gain_lcb=0 (needs > 0.125; mean 0" in result.reason
    g1 = dict(BASE[pb.SEED_GATE_G1_GRADIENT_HEALTH], **{ev.SEED_LOSS_GAIN_N: 512.0})
    r1 = evaluate(pb.SEED_GATE_G1_GRADIENT_HEALTH, pb.Evidence(metrics=g1), T)
    lcb = next(c for c in r1.checks if c.name == "seed_loss_gain_lcb")
    assert lcb.detail.endswith("n 512 pairs") and lcb.value == 0.5 - 2.0 * 0.0625


@pytest.mark.parametrize(
    ("gate", "name", "n_key", "unit"),
    [
        (
            pb.SEED_GATE_G1_GRADIENT_HEALTH,
            ev.GRAD_NORM_MIN,
            "grad_steps",
            "finite seed gradient steps",
        ),
        (
            pb.SEED_GATE_G1_GRADIENT_HEALTH,
            ev.GRAD_NORM_MAX,
            "grad_steps",
            "finite seed gradient steps",
        ),
        (pb.SEED_GATE_G1_GRADIENT_HEALTH, ev.GRAD_FINITE, "grad_steps", "seed gradient steps"),
        (pb.SEED_GATE_G1_GRADIENT_HEALTH, ev.ISOLATION_VIOLATIONS, "isolation_probes", "probes"),
        (pb.SEED_GATE_G2_STABILITY, ev.NONFINITE_COUNT, "grad_steps", "seed gradient steps"),
        (pb.SEED_GATE_G3_INTERFACE, ev.OUTPUT_FINITE, "grad_steps", "seed gradient steps"),
    ],
)
def test_health_checks_state_their_statistic_and_sample_size(
    gate: int, name: str, n_key: str, unit: str
) -> None:
    """The gradient, isolation and finiteness checks say what they count and over how many
    steps or probes (their detail was empty), and 'n unknown' when the evidence lacks it."""
    metrics = {**BASE[gate], n_key: 37.0}
    (check,) = [c for c in evaluate(gate, pb.Evidence(metrics=metrics), T).checks if c.name == name]
    assert "n=37 " in check.detail and check.detail.endswith(unit)
    metrics.pop(n_key)
    (check,) = [c for c in evaluate(gate, pb.Evidence(metrics=metrics), T).checks if c.name == name]
    assert check.detail.endswith("n unknown")


def test_a_failed_finiteness_check_counts_the_non_finite_steps_in_its_sample() -> None:
    """``grad_steps`` counts finite gradient steps only: a seed whose every gradient was
    non-finite read 'n=0'; the finiteness checks count both kinds."""
    gate = pb.SEED_GATE_G1_GRADIENT_HEALTH
    metrics = {**BASE[gate], ev.GRAD_FINITE: 0.0, "grad_steps": 0.0, "grad_nonfinite": 3.0}
    checks = {c.name: c for c in evaluate(gate, pb.Evidence(metrics=metrics), T).checks}
    assert not checks[ev.GRAD_FINITE].passed
    assert checks[ev.GRAD_FINITE].detail.endswith("n=3 seed gradient steps")
    assert checks[ev.GRAD_NORM_MIN].detail.endswith("n=0 finite seed gradient steps")
