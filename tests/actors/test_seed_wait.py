"""The seed core's wait state: a value in the state, text only on the wire."""

from __future__ import annotations

import pytest

from actors.seed.wait import Wait


@pytest.mark.parametrize(
    ("wait", "text"),
    [
        (Wait.evidence(), "g0_evidence"),
        (Wait.gate("G2_CONVERGENCE"), "gate:G2_CONVERGENCE"),
        (Wait.ack("TRAINING"), "ack:TRAINING"),
        (Wait.ack("TRAINING", "pause"), "ack:TRAINING:pause"),
    ],
)
def test_a_wait_round_trips_through_its_wire_text(wait: Wait, text: str) -> None:
    """Each wait has one wire text, and that text parses back to an equal wait."""
    assert str(wait) == text and Wait.parse(text) == wait


def test_no_wait_and_malformed_texts() -> None:
    """The empty text is no wait; anything that names no wait is a ValueError."""
    assert Wait.parse("") is None
    for bad in ("gate:", "gate:G1:x", "ack:", "later", "evidence"):
        with pytest.raises(ValueError, match="not a wait"):
            Wait.parse(bad)


def test_only_a_gate_wait_is_not_ended_by_an_ack() -> None:
    """Evidence and order waits end with an ExecutionAck; a gate wait with a gate result."""
    assert Wait.evidence().acked and Wait.ack("BLENDING").acked
    assert not Wait.gate("G0_SANITY").acked
