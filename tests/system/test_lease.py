"""The ownership lease: one process holds an actor at a time, the others stand by naming it, and
a lease handed back or lost is taken over."""

from __future__ import annotations

import logging

import pytest

from actors.hosting import OwnershipLease
from bus import Bus, BusClosed, Fence, open_bus
from bus.testing import real_redis_url

pytestmark = pytest.mark.anyio

GROUP = "actor:seed:l0.s0"


def _lease(bus: Bus, run: str, process: str = "p") -> OwnershipLease:
    return OwnershipLease(bus, run, GROUP, process=process, ttl_s=5.5, name="seed:l0.s0")


async def test_the_first_taker_holds_the_lease_and_the_second_stands_by(
    bus: Bus, run_id: str
) -> None:
    """The first lease taken is held (and kept when taken again); a second process's take fails
    and names the holder."""
    first, second = _lease(bus, run_id, "p1"), _lease(bus, run_id, "p2")
    assert first.holder == ""
    assert await first.take() is True
    assert await first.take() is True
    assert first.holder == ""
    assert await second.take() is False
    assert second.holder == first.token
    assert await bus.get_value(f"kasmina:{{{run_id}}}:lease:{GROUP}") == first.token.encode()


async def test_a_released_lease_is_taken_over(bus: Bus, run_id: str) -> None:
    """Once the holder hands the lease back, the standby takes it, stops naming a holder, and
    the old holder can no longer renew it; the new one can."""
    first, second = _lease(bus, run_id, "p1"), _lease(bus, run_id, "p2")
    await first.take()
    assert await second.take() is False
    await first.release()
    assert await second.take() is True
    assert second.holder == ""
    assert await first.renew() is False
    assert await second.renew() is True
    assert await first.take() is False and first.holder == second.token


async def test_release_by_a_process_that_does_not_hold_the_lease_changes_nothing(
    bus: Bus, run_id: str
) -> None:
    """A standby's release leaves the holder's lease in place."""
    first, second = _lease(bus, run_id, "p1"), _lease(bus, run_id, "p2")
    await first.take()
    await second.release()
    assert await first.renew() is True
    assert await second.take() is False


def test_tokens_name_the_process_and_differ_per_host(run_id: str) -> None:
    """A token starts with its process name ("shell" when none) and is unique per lease; the
    fence carries the key, the token and the TTL in milliseconds."""
    no_bus: Bus = None  # type: ignore[assignment]  # making a lease reads no bus
    a, b, c = (_lease(no_bus, run_id, p) for p in ("trainer-1", "trainer-1", ""))
    assert a.token.startswith("trainer-1:") and c.token.startswith("shell:")
    assert a.token != b.token
    assert len(a.token) == len("trainer-1:") + 12
    assert a.fence == Fence(f"kasmina:{{{run_id}}}:lease:{GROUP}", a.token, 5500)


async def test_a_standby_warns_once_per_holder_and_on_taking_over(
    bus: Bus, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Standing by logs one warning per holder however often the take is retried, and one more
    when the lease is taken over; both name the actor and the holder."""
    first, second = _lease(bus, run_id, "p1"), _lease(bus, run_id, "p2")
    await first.take()
    with caplog.at_level(logging.WARNING, logger="kasmina.actors"):
        for _ in range(3):
            await second.take()
        await first.release()
        await second.take()
        await second.take()
    lines = [r.getMessage() for r in caplog.records if r.name == "kasmina.actors"]
    assert len(lines) == 2
    assert all("seed:l0.s0" in line and first.token in line for line in lines)
    assert "standing by" in lines[0] and "took over" in lines[1]


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_release_on_a_closed_bus_does_not_raise_but_take_does(
    backend: str, run_id: str
) -> None:
    """Handing the lease back is best effort (a closed bus is no error); taking it reports the
    bus's error."""
    own = open_bus(real_redis_url() if backend == "redis" else f"memory://{run_id}")
    lease = _lease(own, run_id)
    await own.close()
    await lease.release()
    with pytest.raises(BusClosed):
        await lease.take()
