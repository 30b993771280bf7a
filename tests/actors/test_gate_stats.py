"""The exact bounds behind G4's significance check: the regularized incomplete beta, the
Clopper-Pearson lower bound against known values, and the sign-test gain bound's size."""

from __future__ import annotations

import math

import pytest

from actors.gates.stats import (
    binomial_upper_tail,
    clopper_pearson_lower,
    exact_gain_lcb,
    regularized_beta,
    tail_level,
)


def test_binomial_tail_matches_the_sum() -> None:
    """P(X >= k) from the incomplete beta equals the direct binomial sum."""
    for n, p in ((10, 0.5), (37, 0.2), (200, 0.73)):
        for k in range(n + 1):
            direct = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
            assert binomial_upper_tail(k, n, p) == pytest.approx(direct, rel=1e-9, abs=1e-300)


def test_regularized_beta_known_values() -> None:
    """I_x(a, b) at values with closed forms: I_x(1, 1) = x, I_x(a, 1) = x^a, I_0.5(a, a) = 0.5."""
    assert regularized_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)
    assert regularized_beta(4.0, 1.0, 0.6) == pytest.approx(0.6**4)
    assert regularized_beta(250.0, 250.0, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("k", "n", "level", "expected"),
    [
        (10, 10, 0.05, 0.05**0.1),  # all successes: level^(1/n)
        (1, 10, 0.05, 1 - 0.95**0.1),  # one success: 1 - (1 - level)^(1/n)
        (5, 10, 0.025, 0.187086),  # the lower end of the two-sided 95 % interval
        (7, 20, 0.025, 0.153909),
        (500, 1000, 0.025, 0.468549),
        (7, 20, 0.05, 0.177311),
    ],
)
def test_clopper_pearson_lower_known_values(k: int, n: int, level: float, expected: float) -> None:
    """The exact one-sided lower bound agrees with published Clopper-Pearson values."""
    assert clopper_pearson_lower(k, n, level) == pytest.approx(expected, abs=2e-6)


def test_no_success_or_no_discordant_example_gives_no_bound() -> None:
    """No success: bound 0; no discordant example: gain bound 0 (not significant)."""
    assert clopper_pearson_lower(0, 50, 0.05) == 0.0
    assert exact_gain_lcb(0, 0, 600, 0.05) == (0.0, 0.0)


def test_exact_gain_bound_is_positive_iff_the_sign_test_rejects() -> None:
    """lcb > 0 exactly when P(X >= fixes | d, 1/2) < level, for every split of d <= 40."""
    level = tail_level(1.645)
    for d in range(1, 41):
        for fixes in range(d + 1):
            lcb, _ = exact_gain_lcb(fixes, d - fixes, 600, level)
            assert (lcb > 0) == (binomial_upper_tail(fixes, d, 0.5) < level), (fixes, d)


def test_few_discordant_examples_are_never_significant() -> None:
    """3 fixes of 3 (or 4 of 4) discordant examples: p = 1/8 or 1/16 > 5 %, so not significant;
    5 of 5 (p = 1/32) is."""
    level = tail_level(1.645)
    assert exact_gain_lcb(3, 0, 1000, level)[0] < 0
    assert exact_gain_lcb(4, 0, 4, level)[0] < 0
    assert exact_gain_lcb(5, 0, 1000, level)[0] > 0


def test_null_pass_rate_is_within_the_level_for_every_k() -> None:
    """A seed flipping k predictions, each a fix or a break with probability 1/2, passes with
    probability at most the nominal level, for every k up to 60."""
    level = tail_level(1.645)
    for k in range(1, 61):
        rate = sum(
            math.comb(k, f) / 2**k
            for f in range(k + 1)
            if exact_gain_lcb(f, k - f, 600, level)[0] > 0
        )
        assert rate <= level, (k, rate)
