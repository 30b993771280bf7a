"""The host's own memory of committed message ids: kept two clock tolerances, bounded, filled
from events' causes."""

from __future__ import annotations

import pytest

from actors.hosting.recent import RecentIds

S = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def test_a_committed_id_is_kept_two_tolerances_then_dropped() -> None:
    """An id committed now is known until two tolerances have passed, and gone after."""
    clock = Clock()
    recent = RecentIds(30, clock=clock)
    recent.add_committed(["a"])
    clock.now += 60 * S - 1
    recent.add_committed([])  # any later add prunes
    assert "a" in recent
    clock.now += 1
    recent.add_committed(["b"])
    assert "a" not in recent and "b" in recent


def test_the_oldest_ids_beyond_the_limit_are_dropped_and_counted() -> None:
    """Past the limit the oldest ids go first, each counted as evicted; a renewed id goes last."""
    recent = RecentIds(60, limit=3, clock=Clock())
    recent.add_committed(["a", "b", "c"])
    recent.add_committed(["a"])  # renewed: now the newest
    recent.add_committed(["d", "e"])
    assert [m for m in "abcde" if m in recent] == ["a", "d", "e"]
    assert recent.evicted == 2 and len(recent) == 3


def test_a_cause_found_in_a_rebuild_is_kept_only_while_it_can_be_fresh() -> None:
    """An event's cause is remembered for two tolerances from the event's stamp; a cause too old
    to be fresh, or an empty one, is not stored."""
    clock = Clock()
    recent = RecentIds(10, clock=clock)
    recent.add_caused("old", clock.now - 20 * S)
    recent.add_caused("", clock.now)
    recent.add_caused("young", clock.now - 19 * S)
    assert "old" not in recent and "young" in recent and len(recent) == 1
    clock.now += S
    recent.add_committed([])
    assert "young" not in recent


def test_a_limit_below_one_is_refused() -> None:
    """A memory that can hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(60, limit=0)
