"""Pacing on every backend: which inboxes a settle waits for."""

from __future__ import annotations

import uuid

import pytest

from bus import Bus
from contracts import streams
from scenarios.pacing import drained, served_inboxes

pytestmark = pytest.mark.anyio


async def test_served_only_leaves_out_an_inbox_no_actor_serves(bus: Bus) -> None:
    """An inbox no actor registered and no group has read (a stray writer's, a misspelt slot)
    holds up a plain drain check but not a ``served_only`` one, while an unread entry in a
    registered inbox holds up both."""
    run = "pace" + uuid.uuid4().hex[:8]
    stray, served = streams.inbox(run, "seed", "stray"), streams.inbox(run, "seed", "s0")
    registry = streams.registry(run, "seed")
    try:
        await bus.publish(stray, {"m": b"x"})
        assert not await drained(bus, run)
        assert await drained(bus, run, served_only=True)
        await bus.register(registry, served)
        assert await served_inboxes(bus, run) == {served}
        await bus.publish(served, {"m": b"y"})
        assert not await drained(bus, run, served_only=True)
        assert not await drained(bus, run)
    finally:
        await bus.delete(stray, served, registry)
