"""A trainer started on a run an earlier trainer served goes on from that trainer's last step:
step numbers only grow, so the orders the run's actors schedule at their next boundary are due
at steps it reaches, and its step reports are not ignored as old."""

from __future__ import annotations

import threading
import uuid

import anyio
import pytest

from bus import open_bus
from bus.testing import purge_prefix, real_redis_url
from contracts import KeyRing, streams
from kasmina.training import task_factory, train

pytestmark = pytest.mark.redis


def test_a_second_trainer_of_a_run_goes_on_from_the_first_ones_last_step() -> None:
    """12 steps, then a new trainer of the same run (a restart): it begins at step 12 and runs
    its 5 steps as 12..16; a trainer of a new run begins at 0."""
    ring, run, url = KeyRing.generate(), f"steps-{uuid.uuid4().hex[:8]}", real_redis_url()
    try:
        results = [
            train(
                task_factory("digits")(seed=0),
                steps=n,
                stop=threading.Event(),
                redis=url,
                run=run,
                keys=ring,
            )
            for n in (12, 5)
        ]
        assert [(r.first_step, r.steps) for r in results] == [(0, 12), (12, 5)]
    finally:

        async def purge() -> None:
            bus = open_bus(url)
            await purge_prefix(bus, streams.prefix(run))
            await bus.close()

        anyio.run(purge)
