"""A group's lag as the bus reports it: checked against the ids, whatever the server's counter says."""

from __future__ import annotations

from bus.redis_codec import group_lag


def test_nothing_after_the_last_delivered_id_is_no_lag() -> None:
    """A stale positive counter (seen after failovers) is overruled when nothing is left to read."""
    assert group_lag(25, "1700-5", "1700-5") == 0
    assert group_lag(None, "1700-5", "1700-5") == 0
    assert group_lag(None, "1700-5", "1700-5", counted=False) == 0


def test_something_after_the_last_delivered_id_is_at_least_one() -> None:
    """An unknown (nil) or zero counter with entries after the last-delivered id is lag >= 1."""
    assert group_lag(None, "1700-1", "1700-5") == 1
    assert group_lag(0, "1699-9", "1700-0") == 1
    assert group_lag(4, "1700-1", "1700-5") == 4


def test_a_server_without_lag_reports_none_unless_the_ids_decide() -> None:
    """Before Redis 7.0 there is no lag field: None when entries may be unread."""
    assert group_lag(None, "1700-1", "1700-5", counted=False) is None
