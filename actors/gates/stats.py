"""Exact one-sided bounds behind the gates' significance checks (pure Python, no scipy).

A class target's paired gain is a 0/±1 difference per example: only the discordant examples
(a *fix*: right with the seed, wrong without; a *break*: the reverse) carry information. Under
"the seed does not help" a discordant example is a fix with probability at most 1/2, so the
exact test is a one-sided sign test (McNemar) on the ``d`` discordant examples, and its
Clopper-Pearson lower bound ``p_lo`` for the fix rate gives a lower bound on the mean gain:
``(d / n) * (2 * p_lo - 1)``, positive exactly when the sign test is significant.
"""

from __future__ import annotations

import math

__all__ = ["binomial_upper_tail", "clopper_pearson_lower", "exact_gain_lcb", "tail_level"]

_CF_ITERATIONS = 10_000
_CF_EPS = 1e-15
_TINY = 1e-300
_BISECTIONS = 80


def tail_level(z: float) -> float:
    """The one-sided level of a normal bound at ``z`` standard errors (1.645 -> about 0.05)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_ITERATIONS + 1):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _CF_EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularized incomplete beta function (``a, b > 0``)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return regularized_beta(float(k), float(n - k + 1), p)


def clopper_pearson_lower(k: int, n: int, level: float) -> float:
    """The exact one-sided lower confidence bound for a binomial rate, ``k`` successes of ``n``
    at ``level`` (0.05: 95 %): the ``p`` whose upper tail ``P(X >= k)`` is ``level``; 0 when
    ``k`` is 0."""
    if k <= 0 or n <= 0:
        return 0.0
    if k >= n:
        return float(level ** (1.0 / n))
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if binomial_upper_tail(k, n, mid) < level:
            lo = mid
        else:
            hi = mid
    return lo


def exact_gain_lcb(fixes: int, breaks: int, n: int, level: float) -> tuple[float, float]:
    """``(lcb, p_lo)``: the exact lower bound of a mean 0/±1 paired gain over ``n`` examples with
    ``fixes`` and ``breaks`` discordant ones, ``(d / n) * (2 * p_lo - 1)`` with ``p_lo`` the
    Clopper-Pearson lower bound of the fix rate; no discordant example gives ``(0, 0)``."""
    d = fixes + breaks
    if d <= 0 or n <= 0:
        return 0.0, 0.0
    p_lo = clopper_pearson_lower(fixes, d, level)
    return (d / n) * (2.0 * p_lo - 1.0), p_lo
