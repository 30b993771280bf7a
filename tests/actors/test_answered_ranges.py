"""The memory of shed runs: which redelivered entries were answered already, until when, and at
what cost (a bisection per entry, however many runs are kept)."""

from __future__ import annotations

from actors.hosting.recent import RANGES_LIMIT, AnsweredRanges
from bus import Entry

S = 10**9


def _batch(*ids: str) -> list[Entry]:
    return [Entry("in", i, {}) for i in ids]


def test_entries_inside_a_run_are_answered_and_only_those() -> None:
    """Runs may arrive out of order and nest; an entry is answered iff some live run holds it."""
    now = [0]
    answered = AnsweredRanges(60.0, clock=lambda: now[0])
    answered.add("20-0", "30-5")
    answered.add("5-0", "8-0")
    answered.add("21-0", "22-0")  # nested in the first
    batch = _batch("4-9", "5-0", "8-0", "8-1", "19-9", "20-0", "25-3", "30-5", "30-6", "99-0")
    assert answered.entries(batch) == ["5-0", "8-0", "20-0", "25-3", "30-5"]


def test_a_run_is_forgotten_two_tolerances_after_it_was_shed() -> None:
    """After two clock tolerances the entries are stale anyway: the run no longer answers."""
    now = [0]
    answered = AnsweredRanges(60.0, clock=lambda: now[0])
    answered.add("1-0", "9-0")
    now[0] = 119 * S
    assert answered.entries(_batch("5-0")) == ["5-0"]
    now[0] = 121 * S
    assert answered.entries(_batch("5-0")) == []


def test_the_oldest_runs_go_first_beyond_the_limit() -> None:
    """At most RANGES_LIMIT runs are kept; the one shed first is dropped first."""
    now = [0]
    answered = AnsweredRanges(60.0, clock=lambda: now[0])
    for i in range(RANGES_LIMIT + 1):
        now[0] = i
        answered.add(f"{10 * i + 1}-0", f"{10 * i + 2}-0")
    assert answered.entries(_batch("1-0", "11-0", f"{10 * RANGES_LIMIT + 1}-0")) == [
        "11-0",
        f"{10 * RANGES_LIMIT + 1}-0",
    ]
