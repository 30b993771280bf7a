"""The one retry backoff: capped exponential, with jitter so that retrying peers spread out."""

from __future__ import annotations

import random

__all__ = ["backoff_s"]

_MAX_EXPONENT = 30  # 2**30 times any sensible base is far past every cap


def backoff_s(
    exponent: int, *, base_s: float = 0.05, cap_s: float = 2.0, jitter: bool = True
) -> float:
    """``min(cap_s, base_s * 2**exponent)`` seconds; with ``jitter`` a uniform draw from the upper
    half of that (never less than half the delay, never more than the delay)."""
    delay = min(cap_s, base_s * 2 ** min(max(exponent, 0), _MAX_EXPONENT))
    return random.uniform(delay / 2, delay) if jitter else delay
