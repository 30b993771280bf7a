"""G2's loss-spike statistic: a rise of the training loss, averaged over a quarter of the stage,
above its level before the stage, in standard errors; a falling loss or the host's own noise is
no spike, a lasting rise is."""

from __future__ import annotations

import math
import random

from actors.execution.monitor import loss_spike


def _losses(values: list[float], start: int = 0) -> list[tuple[int, float]]:
    return [(start + i, v) for i, v in enumerate(values)]


def test_a_loss_that_falls_through_the_stage_is_no_spike() -> None:
    """A seed that helps: the loss keeps falling after the stage starts; the score is below 0."""
    values = [2.0 * math.exp(-i / 80) + 0.05 * math.sin(i) for i in range(300)]
    score, n = loss_spike(_losses(values), since=200)
    assert score < 0 and n == 100


def test_noise_around_a_flat_level_stays_under_the_default_threshold() -> None:
    """Log-normal per-batch losses (sigma 0.25) with no trend, 100 before and 200 in the stage:
    in 200 draws the score stays under 4 every time (the largest z-score of single losses, the
    statistic before, was over 4 in 49 of them)."""
    rng = random.Random(7)
    worst = 0.0
    for _ in range(200):
        values = [math.exp(rng.gauss(0, 0.25)) for _ in range(300)]
        worst = max(worst, loss_spike(_losses(values), since=100)[0])
    assert worst < 4.0


def test_a_lasting_rise_is_a_spike_and_says_its_sample() -> None:
    """The loss rises by a quarter for 30 of the stage's 100 steps: far above 4."""
    rng = random.Random(3)
    values = [1.0 + rng.gauss(0, 0.02) for _ in range(200)]
    for i in range(140, 170):
        values[i] += 0.25
    score, n = loss_spike(_losses(values), since=100)
    assert score > 10 and n == 100


def test_too_little_to_compare_scores_zero() -> None:
    """Fewer than three losses before the stage, or none in it: 0."""
    assert loss_spike(_losses([1.0, 1.0, 5.0, 6.0]), since=2) == (0.0, 2)
    assert loss_spike(_losses([1.0, 2.0, 3.0]), since=10) == (0.0, 0)


def test_a_rise_from_a_constant_loss_is_a_spike() -> None:
    """A reference with no spread (a frozen host, a saturated loss at 0) is held to a floor on
    its spread, so a rise from it scores far above 4, and a flat stage scores 0."""
    assert loss_spike(_losses([0.25] * 100 + [5.0] * 20), since=100)[0] > 100
    assert loss_spike(_losses([0.0] * 100 + [3.0] * 20), since=100)[0] > 100
    assert loss_spike(_losses([0.25] * 120), since=100) == (0.0, 20)


def test_a_rise_within_the_spread_floor_of_a_constant_loss_is_no_spike() -> None:
    """A rise of 0.1 % above a constant loss stays under 4: the floor is 1 % of the level."""
    assert loss_spike(_losses([2.0] * 100 + [2.002] * 20), since=100)[0] < 4.0
