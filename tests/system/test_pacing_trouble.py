"""Pacing under bus trouble of any kind: a key of the wrong type, a flush that Redis refuses or
that waits on an unreachable Redis only mean "not settled yet", never an error or a hang."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from bus import BusProtocolError, BusUnavailable, RedisStreamBus, open_bus
from bus.testing import redis_server
from contracts import streams
from scenarios.pacing import wait_drained, wait_flushed

pytestmark = pytest.mark.anyio


@pytest.mark.redis
async def test_an_event_log_of_the_wrong_type_is_not_settled_and_raises_nothing() -> None:
    """``events`` replaced by a hash: the run is not settled (False at the deadline, no
    BusProtocolError); once the log is restored it settles again."""
    run = "pace" + uuid.uuid4().hex[:8]
    with redis_server(aof=False) as server:
        bus = open_bus(server.url)
        assert isinstance(bus, RedisStreamBus)
        events = streams.events(run)
        await bus.publish(events, {"m": b"x"})
        await bus.client.rename(events, events + ":saved")
        await bus.client.hset(events, "x", "y")
        with anyio.fail_after(5):
            assert not await wait_drained(bus, run, timeout_s=0.3)
        await bus.client.delete(events)
        await bus.client.rename(events + ":saved", events)
        with anyio.fail_after(5):
            assert await wait_drained(bus, run, timeout_s=3)
        await bus.close()


@pytest.mark.parametrize("error", [BusProtocolError, BusUnavailable])
async def test_a_refused_flush_is_not_settled_and_raises_nothing(error: type[Exception]) -> None:
    """A flush that raises a bus error (Redis refusing, or away) leaves the run unsettled until
    the deadline; the error does not reach the caller."""
    run = "pace" + uuid.uuid4().hex[:8]
    bus = open_bus(f"memory://{run}")

    async def refused() -> None:
        raise error("OOM command not allowed")

    with anyio.fail_after(5):
        assert not await wait_drained(bus, run, timeout_s=0.2, flush=refused)
    await bus.close()


async def test_a_flush_waiting_on_redis_is_cut_off_at_the_deadline() -> None:
    """A flush that does not return (it waits out an unreachable Redis) is cut off at the
    pacing deadline, by wait_drained and by wait_flushed alike."""
    run = "pace" + uuid.uuid4().hex[:8]
    bus = open_bus(f"memory://{run}")
    started = time.monotonic()
    with anyio.fail_after(5):
        assert not await wait_drained(bus, run, timeout_s=0.2, flush=anyio.sleep_forever)
        assert not await wait_flushed(anyio.sleep_forever, 0.2)
        assert await wait_flushed(anyio.lowlevel.checkpoint, 0.2)
    assert time.monotonic() - started < 3
    await bus.close()
