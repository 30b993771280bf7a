"""How G1 and G4 judge a gain: the exact sign test for class targets, the minimum number of
pairs for loss gains, the loss baseline for non-class targets and a non-finite cost input."""

from __future__ import annotations

import math

import pytest

from actors.gates import evaluate
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb

G1, G4 = pb.SEED_GATE_G1_GRADIENT_HEALTH, pb.SEED_GATE_G4_SYSTEM_IMPACT
FREE = GateThresholds(param_cost=0.0, latency_cost=0.0)
COMMON = {
    ev.SEED_PARAMS: 10.0,
    ev.HOST_PARAMS: 1000.0,
    ev.LATENCY_OVERHEAD: 0.0,
    ev.OPEN_STRIKES: 0.0,
}


def _class_g4(fixes: int, breaks: int, n: int) -> pb.GateResult:
    mean = (fixes - breaks) / n
    var = ((fixes + breaks) - n * mean**2) / (n - 1) if n > 1 else 0.0
    metrics = {
        **COMMON,
        ev.CF_GAIN: mean,
        ev.CF_GAIN_SE: math.sqrt(max(var, 0.0) / n),
        ev.CF_GAIN_N: float(n),
        ev.CF_GAIN_FIXES: float(fixes),
        ev.CF_GAIN_BREAKS: float(breaks),
        ev.CF_GAIN_ON_LOSS: 0.0,
        ev.BASELINE_ACC: 0.9,
        ev.VAL_ACC: 0.9,
    }
    return evaluate(G4, pb.Evidence(metrics=metrics), FREE)


def _check(result: pb.GateResult, name: str) -> pb.GateCheck:
    return next(c for c in result.checks if c.name == name)


@pytest.mark.parametrize(
    ("fixes", "breaks", "n"), [(2, 0, 2), (3, 0, 3), (3, 0, 1000), (2, 1, 600)]
)
def test_a_few_fixes_with_no_spread_do_not_pass_g4(fixes: int, breaks: int, n: int) -> None:
    """n = 2 or 3 examples all improved (se 0), or 3 fixes of 1000: not significant, culled."""
    result = _class_g4(fixes, breaks, n)
    check = _check(result, "cf_gain_lcb")
    assert not result.passed and not check.passed and check.value <= 0.0
    assert "exact sign test" in check.detail and f"{fixes} fixes" in check.detail


def test_null_seed_passes_g4_at_most_at_the_nominal_rate() -> None:
    """A seed flipping k of 600 predictions at random passes G4 with probability <= 5 %
    (1 - Phi(1.645)) for every k; the normal bound passed 12.5 % at k = 3."""
    for k in range(1, 41):
        rate = sum(math.comb(k, f) / 2**k for f in range(k + 1) if _class_g4(f, k - f, 600).passed)
        assert rate <= 0.05, (k, rate)


def test_a_clear_class_gain_passes_g4_and_names_its_counts() -> None:
    """40 fixes against 5 breaks of 600 passes, and the detail names fixes, breaks and n."""
    result = _class_g4(40, 5, 600)
    check = _check(result, "cf_gain_lcb")
    assert result.passed and 0 < check.value < 35 / 600
    assert check.detail.startswith("mean 0.0583333, exact sign test at z 1.645: 40 fixes, 5 breaks")
    assert check.detail.endswith(", n 600 examples")


def test_inconsistent_counts_fail_g4() -> None:
    """More fixes and breaks than examples cannot be judged: the check fails saying so."""
    check = _check(_class_g4(400, 300, 600), "cf_gain_lcb")
    assert not check.passed and check.detail.startswith("inconsistent counts")


def _loss_g4(n: float, **extra: float) -> pb.GateResult:
    metrics = {
        **COMMON,
        ev.CF_GAIN: 0.5,
        ev.CF_GAIN_SE: 0.01,
        ev.CF_GAIN_N: n,
        ev.CF_GAIN_ON_LOSS: 1.0,
        ev.CF_GAIN_BASE: 1.0,
        ev.BASELINE_LOSS: 1.0,
        ev.VAL_LOSS: 0.4,
        **extra,
    }
    return evaluate(G4, pb.Evidence(metrics=metrics), FREE)


def test_a_loss_gain_needs_min_gain_pairs() -> None:
    """A loss gain on fewer than min_gain_pairs (30) pairs fails with 'too few pairs', even with
    no standard error (one pair); at 30 pairs it is judged on its bound."""
    for n in (1.0, 29.0):
        result = _loss_g4(n)
        check = _check(result, "cf_gain_lcb")
        assert not result.passed and not check.passed and not check.missing
        assert check.detail == f"too few pairs: n {n:.0f} < min_gain_pairs 30"
        assert f"cf_gain_lcb (too few pairs: n {n:.0f}" in result.reason
    one = {**COMMON, ev.CF_GAIN: 0.5, ev.CF_GAIN_N: 1.0, ev.CF_GAIN_ON_LOSS: 1.0}
    one[ev.CF_GAIN_BASE] = 1.0
    one.update({ev.BASELINE_LOSS: 1.0, ev.VAL_LOSS: 0.4})  # se unmeasured: filtered out
    check = _check(evaluate(G4, pb.Evidence(metrics=one), FREE), "cf_gain_lcb")
    assert not check.passed and not check.missing and check.detail.startswith("too few pairs")
    assert _loss_g4(30.0).passed


def test_g1_needs_min_gain_pairs() -> None:
    """G1's shadow-loss gain on fewer than min_gain_pairs pairs fails with 'too few pairs'."""
    metrics = {
        ev.TRAINING_STEPS: 500.0,
        ev.GRAD_FINITE: 1.0,
        ev.GRAD_NORM_MIN: 1e-3,
        ev.GRAD_NORM_MAX: 1.0,
        ev.ISOLATION_VIOLATIONS: 0.0,
        ev.SEED_LOSS_GAIN: 0.5,
        ev.SEED_LOSS_GAIN_SE: 0.0,
        ev.SEED_LOSS_GAIN_N: 3.0,
    }
    result = evaluate(G1, pb.Evidence(metrics=metrics), GateThresholds())
    check = _check(result, "seed_loss_gain_lcb")
    assert not result.passed and check.detail.startswith("too few pairs: n 3")
    metrics[ev.SEED_LOSS_GAIN_N] = 64.0
    assert evaluate(G1, pb.Evidence(metrics=metrics), GateThresholds()).passed


def test_a_regression_target_is_judged_on_its_loss_baseline() -> None:
    """A non-class target: G4's baseline regression compares the validation loss with the seed
    on against the host's at germination, so a helpful seed passes every G4 check and a seed
    whose loss rose more than max_regression (relative) fails it."""
    helpful = _loss_g4(1024.0)
    assert helpful.passed, helpful.reason
    check = _check(helpful, "baseline_regression")
    assert check.value == pytest.approx(-0.6) and "validation loss 0.4" in check.detail
    worse = _loss_g4(1024.0, **{ev.VAL_LOSS: 1.05})
    check = _check(worse, "baseline_regression")
    assert not worse.passed and not check.passed and check.value == pytest.approx(0.05)
    no_base = {**COMMON, ev.CF_GAIN: 0.5, ev.CF_GAIN_SE: 0.01, ev.CF_GAIN_N: 1024.0}
    no_base.update({ev.CF_GAIN_ON_LOSS: 1.0, ev.CF_GAIN_BASE: 1.0, ev.VAL_LOSS: 0.4})
    check = _check(evaluate(G4, pb.Evidence(metrics=no_base), FREE), "baseline_regression")
    assert check.missing and ev.BASELINE_LOSS in check.detail


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        (ev.HOST_PARAMS, math.inf),
        (ev.HOST_PARAMS, -math.inf),
        (ev.HOST_PARAMS, math.nan),
        (ev.LATENCY_OVERHEAD, -math.inf),
        (ev.SEED_PARAMS, math.nan),
    ],
)
def test_a_non_finite_cost_input_fails_g4(name: str, bad: float) -> None:
    """A non-finite host_params, seed_params or latency fails cf_net_gain (not clamped), and the
    result carries no non-finite value (it must reach the slot)."""
    result = _loss_g4(1024.0, **{name: bad})
    check = _check(result, "cf_net_gain")
    assert not result.passed and not check.passed
    assert check.detail.startswith("non-finite measurement")
    assert all(math.isfinite(c.value) for c in result.checks)
