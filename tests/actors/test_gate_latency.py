"""G3's latency check and G4's cost count a seed's relative latency only beyond the absolute
floor of time it adds per forward: on a tiny host the slot's fixed cost is a multiple of a
forward of microseconds, which must not cull every seed."""

from __future__ import annotations

import math

import pytest

from actors.gates import evaluate
from contracts import evidence as ev
from contracts.config import GateThresholds
from leyline import pb

G3, G4 = pb.SEED_GATE_G3_INTERFACE, pb.SEED_GATE_G4_SYSTEM_IMPACT
G3_OK = {
    ev.OUTPUT_FINITE: 1.0,
    ev.SEED_HOST_NORM_RATIO: 0.5,
    ev.CF_LOSS_ON: 0.30,
    ev.CF_LOSS_OFF: 0.31,
}


def _latency_check(metrics: dict[str, float], t: GateThresholds) -> pb.GateCheck:
    result = evaluate(G3, pb.Evidence(metrics={**G3_OK, **metrics}), t)
    (check,) = [c for c in result.checks if c.name == ev.LATENCY_OVERHEAD]
    assert result.passed == all(c.passed for c in result.checks)
    return check


@pytest.mark.parametrize(
    ("overhead", "added_us", "passes", "value"),
    [
        (3.0, 200.0, True, 0.0),  # a tiny host: three times its forward, 0.2 ms
        (3.0, 1000.0, True, 0.0),  # on the floor
        (3.0, 1001.0, False, 3.0),  # beyond it: the relative overhead counts in full
        (0.4, 5000.0, True, 0.4),  # a big host: under the relative bound
        (3.0, math.nan, False, 3.0),  # an unmeasured added time lets nothing off
    ],
)
def test_g3_counts_the_relative_overhead_only_beyond_the_floor(
    overhead: float, added_us: float, passes: bool, value: float
) -> None:
    """The check's value is 0 within the floor, the relative overhead beyond it."""
    check = _latency_check(
        {ev.LATENCY_OVERHEAD: overhead, ev.LATENCY_ADDED_US: added_us}, GateThresholds()
    )
    assert check.passed is passes and check.value == pytest.approx(value)
    if math.isfinite(added_us):  # the detail gives the added time against the floor
        assert f"{added_us:.0f} µs added per forward" in check.detail


def test_without_an_added_time_the_relative_overhead_is_judged_alone() -> None:
    """Evidence from a trainer that reports no added time is judged as before: 3.0 fails."""
    check = _latency_check({ev.LATENCY_OVERHEAD: 3.0}, GateThresholds())
    assert not check.passed and check.value == 3.0


def test_a_zero_floor_judges_every_overhead() -> None:
    """`latency_floor_us = 0` restores the purely relative check."""
    t = GateThresholds(latency_floor_us=0.0)
    check = _latency_check({ev.LATENCY_OVERHEAD: 3.0, ev.LATENCY_ADDED_US: 50.0}, t)
    assert not check.passed


def test_g4_cost_charges_latency_only_beyond_the_floor() -> None:
    """The net gain of a small class gain survives a within-floor overhead, not one beyond it."""
    t = GateThresholds(param_cost=0.0, latency_cost=0.01)
    base = {
        ev.CF_GAIN: 0.02,
        ev.CF_GAIN_SE: 0.001,
        ev.CF_GAIN_N: 500.0,
        ev.CF_GAIN_FIXES: 10.0,
        ev.CF_GAIN_BREAKS: 0.0,
        ev.CF_GAIN_ON_LOSS: 0.0,
        ev.BASELINE_ACC: 0.9,
        ev.VAL_ACC: 0.92,
        ev.SEED_PARAMS: 10.0,
        ev.HOST_PARAMS: 1000.0,
        ev.OPEN_STRIKES: 0.0,
        ev.LATENCY_OVERHEAD: 3.0,
    }

    def net(added_us: float) -> pb.GateCheck:
        metrics = {**base, ev.LATENCY_ADDED_US: added_us}
        result = evaluate(G4, pb.Evidence(metrics=metrics), t)
        return next(c for c in result.checks if c.name == "cf_net_gain")

    within, beyond = net(300.0), net(3000.0)
    assert within.passed and within.value == pytest.approx(0.02)
    assert not beyond.passed and beyond.value == pytest.approx(0.02 - 0.03)


def test_g3_loss_worsening_detail_counts_the_losses_behind_it_not_the_gain_pairs() -> None:
    """The counterfactual loss check gives the count of the losses it compares (``cf_loss_n``),
    not the gain's pairs; a loss the trainer's evaluate measured is said to be so."""
    m = {ev.LATENCY_OVERHEAD: 0.1, ev.CF_GAIN_N: 64.0}
    for extra, expected in (
        ({ev.CF_LOSS_N: 200.0}, "n=200 validation losses"),
        ({}, "measured by the trainer's evaluate"),
    ):
        result = evaluate(G3, pb.Evidence(metrics={**G3_OK, **m, **extra}), GateThresholds())
        (check,) = [c for c in result.checks if c.name == "cf_loss_worsening"]
        assert expected in check.detail and "n=64" not in check.detail
