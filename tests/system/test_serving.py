"""The lease-driven serving loop of a host: it takes the actor's lease, rebuilds, serves its inbox
and hands the lease back on stop; it stands by while another process holds the lease, rebuilds
again after losing it, retries a rebuild Redis refused, and ends when its bus is closed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial

import anyio
import pytest
from google.protobuf.message import Message

from actors.core import Decision
from actors.hosting import Lifecycle, Meta, OwnershipLease, Router
from actors.hosting.housekeeping import Housekeeping
from actors.hosting.serving import LeasedHost
from bus import Bus, BusClosed, BusUnavailable, Entry, Fenced, open_bus
from bus.testing import FaultyBus, eventually, real_redis_url
from contracts import KasminaConfig, KeyRing, Signer

pytestmark = pytest.mark.anyio

SLOT = "l0.s0"


class Logic:
    """A core that decides nothing (the host under test never asks it)."""

    name = f"seed:{SLOT}"
    accepts: frozenset[str] = frozenset()

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        raise AssertionError("not called")

    def apply(self, decision: Decision) -> None: ...

    def reset(self) -> None: ...

    def fold(self, kind: str, message: Message) -> bool:
        return False

    def snapshot(self) -> object:
        return None

    def restore(self, snapshot: object) -> None: ...

    def digests(self) -> dict[tuple[str, str], bytes]:
        return {}


class Host(LeasedHost):
    """A host that counts its rebuilds (failing the first ``refusals`` as Redis away) and
    records the entry ids of each batch (fencing off the first ``fenced`` batches, then failing
    the next ones' commits with the errors in ``failing``)."""

    def __init__(self, bus: Bus, run: str, process: str, ttl_s: float = 0.6) -> None:
        super().__init__()
        config = KasminaConfig.load(env={}, overrides={"bus.owner_ttl_s": ttl_s})
        self.logic, self.bus, self.run_id, self.config = Logic(), bus, run, config
        self.inbox = f"kasmina:{{{run}}}:inbox:seed:{SLOT}"
        self.group = consumer = f"actor:seed:{SLOT}"
        self.consumer_name = f"{consumer}:{process}"
        self.lease = OwnershipLease(
            bus, run, self.group, process=process, ttl_s=ttl_s, name=self.logic.name
        )
        self.router = Router(bus, run)
        self.housekeeping = Housekeeping(
            bus, run, self.inbox, Signer(KeyRing.generate(), "seed"), config, name=self.logic.name,
            process=process, heartbeat_s=60.0, counters=lambda: (0, {}),
        )  # fmt: skip
        self.rebuilds = self.refusals = self.fenced = 0
        self.failing: list[Exception] = []  # raised by the next batches' commits, in turn
        self.batches: list[list[str]] = []

    async def rebuild(self) -> int:
        self.rebuilds += 1
        if self.refusals:
            self.refusals -= 1
            raise BusUnavailable("away")
        return 0

    async def _process(self, batch: Sequence[Entry]) -> None:
        self.batches.append([e.id for e in batch])
        if self.fenced:
            self.fenced -= 1
            raise Fenced("taken")
        if self.failing:
            raise self.failing.pop(0)


def _lease_key(run: str) -> str:
    return f"kasmina:{{{run}}}:lease:actor:seed:{SLOT}"


@asynccontextmanager
async def _serving(*hosts: Host) -> AsyncIterator[None]:
    """Hosts run (each until it serves or stands by), then stopped."""
    async with anyio.create_task_group() as tg:
        for host in hosts:
            await tg.start(host.run)
        yield
        for host in hosts:
            await host.stop()


async def test_a_host_rebuilds_serves_and_hands_its_lease_back(bus: Bus, run_id: str) -> None:
    """Started, a host owns its actor (holds the lease, has rebuilt once, registered its inbox)
    and serves its inbox;
    stopped, it has handed the lease back and is stopped."""
    host = Host(bus, run_id, "p1")
    assert host.lifecycle is Lifecycle.STARTING and not host.owner
    async with _serving(host):
        assert (host.owner, host.rebuilds) == (True, 1)
        assert await bus.get_value(_lease_key(run_id)) == host.token.encode()
        assert await bus.members(f"kasmina:{{{run_id}}}:registry:seed") == [host.inbox]
        entry = await bus.publish(host.inbox, {"x": b"1"})
        await eventually(lambda: _true(host.batches == [[entry]]))
        await host.stop()  # returns once the run has finished
        assert (host.lifecycle, host.owner) == (Lifecycle.STOPPED, False)
        assert await bus.get_value(_lease_key(run_id)) is None


async def _true(value: bool) -> bool:
    return value


async def test_a_second_host_stands_by_and_takes_over_when_the_first_stops(
    bus: Bus, run_id: str
) -> None:
    """A second host for the same actor stands by naming the holder, rebuilds nothing and reads
    nothing; when the first stops it takes the lease, rebuilds and serves. (A lease of 3 s: one
    that lapses while a loaded machine stalls the loop would be a takeover of its own.)"""
    first, second = Host(bus, run_id, "p1", ttl_s=3.0), Host(bus, run_id, "p2", ttl_s=3.0)
    async with _serving(first, second):
        assert (second.lifecycle, second.owner, second.standing_by) == (
            Lifecycle.STANDBY, False, first.token,
        )  # fmt: skip
        assert second.rebuilds == 0
        entry = await bus.publish(first.inbox, {"x": b"1"})
        await eventually(lambda: _true(first.batches == [[entry]]))
        await first.stop()
        await eventually(lambda: _true(second.rebuilds == 1))
        assert (second.owner, second.standing_by, second.batches) == (True, "", [])
        assert await bus.get_value(_lease_key(run_id)) == second.token.encode()


async def test_a_rebuild_redis_refused_is_retried_before_serving(bus: Bus, run_id: str) -> None:
    """A host whose rebuild finds Redis away twice tries again until it succeeds, and only then
    serves."""
    host = Host(bus, run_id, "p1")
    host.refusals = 2
    async with _serving(host):
        assert (host.rebuilds, host.owner) == (3, True)


async def test_a_fenced_commit_makes_the_host_rebuild_and_decide_again(
    bus: Bus, run_id: str
) -> None:
    """A batch whose commit was fenced off leaves the host's state stale: it rebuilds (its lease
    is still its own) and the same entry comes back to be decided again."""
    host = Host(bus, run_id, "p1")
    host.fenced = 1
    with _warnings() as lines:
        async with _serving(host):
            entry = await bus.publish(host.inbox, {"x": b"1"})
            await eventually(lambda: _true(host.batches == [[entry], [entry]]))
            assert (host.rebuilds, host.owner) == (2, True)
    assert lines == ["seed:l0.s0: lost ownership (a commit was fenced off); standing by",
                     "seed:l0.s0: serving again"]  # fmt: skip


async def test_a_lease_taken_by_another_process_sends_the_host_to_standby(
    bus: Bus, run_id: str
) -> None:
    """When another process holds the lease at renewal, the host stands by naming it; once that
    lease is gone it takes the lease back and rebuilds before serving again."""
    host = Host(bus, run_id, "p1")
    with _warnings() as lines:
        async with _serving(host):
            await bus.set_value(_lease_key(run_id), b"intruder:1", ttl_ms=60_000)
            await eventually(lambda: _true(host.standing_by == "intruder:1"))
            assert (host.lifecycle, host.owner) == (Lifecycle.STANDBY, False)
            await bus.delete(_lease_key(run_id))
            await eventually(lambda: _true(host.rebuilds == 2))
            assert host.owner and host.standing_by == ""
    assert lines[0] == "seed:l0.s0: lost ownership (lease expired or taken over); standing by"
    assert lines[-1] == "seed:l0.s0: serving again"  # said once it has its lease back


async def test_a_host_stopped_before_it_ran_does_nothing(bus: Bus, run_id: str) -> None:
    """A host stopped before its run returns at once from it: no lease taken, nothing rebuilt."""
    host = Host(bus, run_id, "p1")
    await host.stop()
    await host.run()
    assert (host.lifecycle, host.rebuilds) == (Lifecycle.STOPPED, 0)
    assert await bus.get_value(_lease_key(run_id)) is None


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_closed_bus_ends_the_run(backend: str, run_id: str) -> None:
    """A host whose bus is closed while it serves stops serving and its run returns."""
    bus = open_bus(real_redis_url() if backend == "redis" else f"memory://{run_id}")
    host = Host(bus, run_id, "p1")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(host.run)
            await bus.close()
    assert host.lifecycle is Lifecycle.STOPPED


@contextmanager
def _warnings() -> Iterator[list[str]]:
    """The warnings the actors' logger emits inside the block."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("kasmina.actors")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


async def test_stop_cuts_a_standbys_wait_short(bus: Bus, run_id: str) -> None:
    """A standby waits a third of the lease TTL between tries; stopping it ends the wait at
    once rather than at the next try."""
    first, second = Host(bus, run_id, "p1"), Host(bus, run_id, "p2")
    second.config = KasminaConfig.load(env={}, overrides={"bus.owner_ttl_s": 60.0})
    async with _serving(first, second):
        assert (second.lifecycle, second.standing_by) == (Lifecycle.STANDBY, first.token)
        with anyio.fail_after(5):  # its next try would be 20 s away
            await second.stop()
        assert second.lifecycle == Lifecycle.STOPPED


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_host_on_a_closed_bus_stops_without_rebuilding(backend: str, run_id: str) -> None:
    """A host whose bus is already closed returns from its run, stopped, having rebuilt
    nothing."""
    bus = open_bus(real_redis_url() if backend == "redis" else f"memory://{run_id}")
    await bus.close()
    host = Host(bus, run_id, "p1")
    with anyio.fail_after(10):
        await host.run()
    assert (host.lifecycle, host.rebuilds) == (Lifecycle.STOPPED, 0)


async def test_a_commit_that_found_redis_away_is_decided_again_after_a_rebuild(
    bus: Bus, run_id: str
) -> None:
    """A batch whose commit found Redis away (twice) leaves the host serving: it rebuilds after
    each failure and the entry, still pending, comes back until it is committed (a lease that
    cannot lapse under a loaded machine: only the commits fail here)."""
    host = Host(bus, run_id, "p1", ttl_s=10.0)
    host.failing = [BusUnavailable("away"), BusUnavailable("away")]
    async with _serving(host):
        entry = await bus.publish(host.inbox, {"x": b"1"})
        try:
            await eventually(lambda: _true(host.batches == [[entry]] * 3))
        except TimeoutError:
            raise AssertionError(f"batches {host.batches}, rebuilds {host.rebuilds}") from None
        assert (host.rebuilds, host.owner) == (3, True)


async def test_a_commit_that_found_the_bus_closed_stops_the_host(bus: Bus, run_id: str) -> None:
    """A batch whose commit found the bus closed ends the host's run, stopped."""
    host = Host(bus, run_id, "p1")
    host.failing = [BusClosed("closed")]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(host.run)
            await bus.publish(host.inbox, {"x": b"1"})
    assert host.lifecycle == Lifecycle.STOPPED and len(host.batches) == 1


async def test_a_renewal_that_found_redis_away_is_retried_at_the_next_period(
    bus: Bus, run_id: str
) -> None:
    """A lease renewal that finds Redis away is tried again a period later: the host renews on,
    keeps its lease and serves; the outage is said (a serving host whose reads wait it out
    notices it by its renewals)."""
    faulty = FaultyBus(bus, {"renew_key"}, times=1)
    host = Host(faulty, run_id, "p1")  # type: ignore[arg-type]
    with _warnings() as lines:
        async with _serving(host):
            await eventually(lambda: _true(faulty.calls["renew_key"] >= 3))
            assert host.owner and faulty.failures == 1
            assert await bus.get_value(_lease_key(run_id)) == host.token.encode()
    said = (
        "seed:l0.s0: Redis does not answer (BusUnavailable: injected failure before renew_key);"
        " waiting for it"
    )
    assert lines == [said]


async def test_a_take_that_found_redis_away_neither_serves_nor_stands_by(
    bus: Bus, run_id: str
) -> None:
    """While taking the lease finds Redis away the host does not rebuild and names no holder;
    once Redis answers it takes the lease and serves."""
    faulty = FaultyBus(bus, {"claim_key"}, times=2)
    host = Host(faulty, run_id, "p1")  # type: ignore[arg-type]
    async with _serving(host):
        assert faulty.calls["claim_key"] == 3 and host.rebuilds == 1 and host.owner


class _Started:
    """A run's task status that counts the times the run reported it had started."""

    def __init__(self) -> None:
        self.calls = 0

    def started(self, value: object = None) -> None:
        self.calls += 1


async def test_a_host_stopped_while_redis_refuses_its_rebuild_never_reports_started(
    bus: Bus, run_id: str
) -> None:
    """A host stopped while its rebuild keeps finding Redis away ends its run stopped, with the
    lease handed back, without ever reporting that it started (it has no state to serve)."""
    host, status = Host(bus, run_id, "p1"), _Started()
    host.refusals = 1_000_000
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(host.run, task_status=status))  # type: ignore[arg-type]
            await eventually(lambda: _true(host.rebuilds >= 2))
            await host.stop()
    assert (status.calls, host.lifecycle, host.batches) == (0, Lifecycle.STOPPED, [])
    assert await bus.get_value(_lease_key(run_id)) is None


class _ClosingHost(Host):
    """A host whose bus is closed under it during its rebuild."""

    async def rebuild(self) -> int:
        self.rebuilds += 1
        await self.bus.close()
        raise BusClosed("closed during the rebuild")


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_host_whose_bus_closes_during_its_rebuild_stops_unstarted(
    backend: str, run_id: str
) -> None:
    """A host whose bus is closed during its rebuild ends its run stopped after that one rebuild,
    without ever reporting that it started."""
    bus = open_bus(real_redis_url() if backend == "redis" else f"memory://{run_id}")
    host, status = _ClosingHost(bus, run_id, "p1"), _Started()
    with anyio.fail_after(10):
        await host.run(task_status=status)  # type: ignore[arg-type]
    assert (status.calls, host.lifecycle, host.rebuilds) == (0, Lifecycle.STOPPED, 1)


async def test_a_cancelled_run_still_hands_the_lease_back(bus: Bus, run_id: str) -> None:
    """A serving host whose run is cancelled hands its lease back on the way out (another
    process need not wait for it to expire) and is left ready to be run again."""
    host = Host(bus, run_id, "p1")
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        assert await bus.get_value(_lease_key(run_id)) == host.token.encode()
        tg.cancel_scope.cancel()
    assert await bus.get_value(_lease_key(run_id)) is None
    assert (host.lifecycle, host.owner) == (Lifecycle.STARTING, False)


async def test_a_host_stopped_while_it_takes_its_lease_does_not_rebuild(
    bus: Bus, run_id: str
) -> None:
    """A host stopped while it is taking its lease stays stopping once the lease is taken: it
    rebuilds nothing, reads nothing, and its run returns stopped with the lease handed back."""
    host = Host(bus, run_id, "p1")
    take = host.lease.take

    async def take_then_stop() -> bool:
        taken = await take()
        tg.start_soon(host.stop)
        await eventually(lambda: _true(host.lifecycle is Lifecycle.STOPPING))
        return taken

    host.lease.take = take_then_stop  # type: ignore[method-assign]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run)
    assert (host.lifecycle, host.rebuilds, host.batches) == (Lifecycle.STOPPED, 0, [])
    assert await bus.get_value(_lease_key(run_id)) is None
