"""The states of an actor host: which hold the ownership lease and which are the end of its run
(docs/design.md: starting, standby, rebuilding, serving, stopping, stopped)."""

from __future__ import annotations

import pytest

from actors.hosting import Lifecycle

# state -> (owns the lease, ending), written from the state table of actors/hosting/lifecycle.py
STATES = {
    "starting": (False, False),
    "standby": (False, False),
    "rebuilding": (True, False),
    "serving": (True, False),
    "stopping": (False, True),
    "stopped": (False, True),
}


def test_the_states_are_the_six_of_the_design() -> None:
    """A host has exactly the six states, by these names."""
    assert sorted(s.value for s in Lifecycle) == sorted(STATES)


@pytest.mark.parametrize(("state", "expected"), sorted(STATES.items()))
def test_only_rebuilding_and_serving_own_and_only_stopping_and_stopped_end(
    state: str, expected: tuple[bool, bool]
) -> None:
    """A host owns its actor while rebuilding or serving, and is ending once stopping."""
    assert (Lifecycle(state).owns, Lifecycle(state).ending) == expected
