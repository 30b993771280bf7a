"""KasminaClient publishes a command exactly once through lost replies and a Redis restart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.client import KasminaClient
from actors.execution.actor import ExecutionActor
from actors.shell import FRAME
from bus import Bus, BusUnavailable, RedisStreamBus, open_bus
from bus.testing import REDIS_SERVER, FaultyBus, eventually, redis_server
from contracts import REGISTRY, KasminaConfig, KeyRing, Signer, Verifier, streams
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio


def _client(bus: Bus, run: str, *, retry_s: float = 10.0) -> KasminaClient:
    ring = KeyRing.generate()
    return KasminaClient(bus, run, Signer(ring, "tamiyo"), Verifier(ring), retry_s=retry_s)


@pytest.mark.parametrize("backend", ["memory", "fakeredis"])
@pytest.mark.parametrize(
    ("faults", "times"),
    [({"publish:after"}, 1), ({"publish:before"}, 2), ({"publish:after", "find_entry:before"}, 2)],
)
async def test_a_failed_try_never_sends_the_command_twice(
    backend: str, faults: set[str], times: int
) -> None:
    """A lost reply (the entry was written), refused publishes, or a lost reply and then a failed
    look-up: the inbox ends with exactly one copy of the command, under the id returned."""
    run = "r" + uuid.uuid4().hex[:8]
    inner = open_bus(f"{backend}://{run}")
    bus = FaultyBus(inner, faults, times=times)
    client = _client(bus, run)
    command_id = await client.command("l0.s0", "cull")
    entries = await inner.range(streams.inbox(run, "seed", "l0.s0"))
    assert len(entries) == 1 and bus.failures == client.retries == times
    assert client.verifier.open(entries[0].fields[FRAME], stream=entries[0].stream).id == command_id
    await inner.close()


async def test_publishing_gives_up_after_retry_s() -> None:
    """When Redis stays away the client raises BusUnavailable once ``retry_s`` has passed."""
    inner = open_bus("memory://giveup")
    bus = FaultyBus(inner, {"publish"})
    client = _client(bus, "giveup", retry_s=0.3)
    with anyio.fail_after(5), pytest.raises(BusUnavailable):
        await client.command("l0.s0", "pause")
    assert await inner.range(streams.inbox("giveup", "seed", "l0.s0")) == []
    assert client.retries >= 2
    await inner.close()


@pytest.mark.redis
@pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server")
async def test_command_sent_across_a_redis_restart_lands_once() -> None:
    """redis-server (AOF) killed before the command and restarted while the client retries:
    the command lands exactly once, with nothing lost that was published before."""
    with redis_server(aof=True, appendfsync="always") as server:
        bus = RedisStreamBus.from_url(server.url, retries=0)
        client = _client(bus, "restart")
        inbox = streams.inbox("restart", "seed", "l0.s1")
        first = await client.command("l0.s1", "pause")
        await anyio.to_thread.run_sync(server.kill)
        async with anyio.create_task_group() as tg:
            ids: list[str] = []

            async def send() -> None:
                ids.append(str(await client.command("l0.s1", "resume")))

            tg.start_soon(send)

            async def retrying() -> bool:  # the client is trying against the dead server
                return client.retries >= 2

            await eventually(retrying, timeout_s=30)
            await anyio.to_thread.run_sync(server.start)
        frames = [e.fields[FRAME] for e in await bus.range(inbox)]
        assert [client.verifier.open(f, stream=inbox).id for f in frames] == [first, ids[0]]
        await bus.close()


@pytest.mark.parametrize("fault", ["publish_many:after", "publish_many:before"])
async def test_the_execution_outbox_is_flushed_once_through_a_failed_try(fault: str) -> None:
    """A flush whose reply was lost (or that Redis refused) is retried without a second copy,
    so the actors see no replays after a Redis restart."""
    run = "flush" + uuid.uuid4().hex[:8]
    inner = open_bus(f"memory://{run}")
    bus = FaultyBus(inner, {fault}, times=1)
    ring = KeyRing.generate()
    sim = SimRuntime(["l0.s0", "l0.s1"], report_every=1, barrier_frequency=1)
    actor = ExecutionActor(sim, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig())  # fmt: skip
    sim.on_step(0)
    sent = await actor.flush()
    assert sent > 0 and bus.failures == 1
    copies = [(name, e.fields[FRAME]) for name in await inner.streams("*")
              for e in await inner.range(name)]  # fmt: skip
    assert len(copies) == sent and len(set(copies)) == sent  # one copy per (stream, message)
    await inner.close()


class _StallingBus(FaultyBus):
    """A bus whose first ``publish_many`` stalls until cancelled, before or after the write."""

    def __init__(self, inner: Bus, land_first: bool) -> None:
        super().__init__(inner)
        self.land_first = land_first
        self.stalled = anyio.Event()

    async def publish_many(self, appends: Any) -> list[str]:
        if self.stalled.is_set():
            return await self.inner.publish_many(appends)
        if self.land_first:
            await self.inner.publish_many(appends)
        self.stalled.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("land_first", [False, True])
async def test_a_flush_cancelled_mid_publish_loses_and_doubles_nothing(land_first: bool) -> None:
    """A flush cancelled while its publish is in flight (the actor stopping) keeps the drained
    batch: the next flush publishes it once, or finds that it had landed, never a second copy."""
    run = "cancel" + uuid.uuid4().hex[:8]
    inner = open_bus(f"memory://{run}")
    bus = _StallingBus(inner, land_first)
    ring = KeyRing.generate()
    sim = SimRuntime(["l0.s0"], report_every=1, barrier_frequency=1)
    actor = ExecutionActor(sim, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig())  # fmt: skip
    sim.on_step(0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(actor.flush)
            await bus.stalled.wait()
            tg.cancel_scope.cancel()
        sim.on_step(1)
        sent = await actor.flush()
    copies = [(name, e.fields[FRAME]) for name in await inner.streams("*")
              for e in await inner.range(name)]  # fmt: skip
    assert len(copies) == len(set(copies)) and sent > 0
    steps = sorted(
        (name.rpartition(":inbox:")[2], REGISTRY.parse(env.kind, env.body).step)
        for name, frame in copies
        if (env := Verifier(ring, replay=True).open(frame, stream=name)).kind == "step.report"
    )
    # both reports, each once to each destination (the slot's SeedActor, the SafetyActor)
    assert steps == [("safety", 0), ("safety", 1), ("seed:l0.s0", 0), ("seed:l0.s0", 1)]
    await inner.close()


@pytest.mark.parametrize("backend", ["memory", "fakeredis"])
async def test_a_wait_rides_out_an_outage_of_the_outcomes_reads(backend: str) -> None:
    """Reads of the outcomes stream that fail (Redis restarting) are retried within the wait's
    timeout: the wait returns the outcome recorded meanwhile instead of raising."""
    run = "w" + uuid.uuid4().hex[:8]
    inner = open_bus(f"{backend}://{run}")
    bus = FaultyBus(inner, {"range"}, times=3)
    ring = KeyRing.generate()
    client = KasminaClient(bus, run, Signer(ring, "tamiyo"), Verifier(ring), retry_s=10.0)
    record = REGISTRY["command.outcome"](
        command_id="c-1", result=2, slot="l0.s0", action="pause", actor="seed:l0.s0"
    )
    outcomes = streams.outcomes(run)
    frame = Signer(ring, "kasmina-run:" + run).seal("command.outcome", record, stream=outcomes)
    await inner.publish(outcomes, {FRAME: frame, "kind": b"command.outcome"})
    with anyio.fail_after(10):
        outcome = await client.wait("c-1", timeout_s=8)
    assert outcome.command_id == "c-1" and bus.failures == 3 and client.retries == 3
    await inner.close()


@pytest.mark.parametrize("backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_stream_that_takes_no_more_entries_costs_only_its_own_messages(
    backend: str,
) -> None:
    """One slot's inbox at the largest id (a Redis writer's entry) refuses every append: the
    flush drops that inbox's messages and sends the rest, instead of holding the whole outbox
    (and the trainer's traffic to every other stream) for ever."""
    from bus.testing import purge_prefix, real_redis_url

    run = "full" + uuid.uuid4().hex[:8]
    bus = open_bus(real_redis_url() if backend == "redis" else f"fakeredis://{run}")
    ring = KeyRing.generate()
    sim = SimRuntime(["l0.s0", "l0.s1"], report_every=1, barrier_frequency=1)
    actor = ExecutionActor(sim, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig())  # fmt: skip
    dead = streams.inbox(run, "seed", "l0.s1")
    try:
        await bus.client.xadd(dead, {"x": b"y"}, id="18446744073709551615-18446744073709551615")  # type: ignore[attr-defined]
        sim.on_step(0)
        sent = await actor.flush()
        live = await bus.range(streams.inbox(run, "seed", "l0.s0"))
        assert sent > 0 and len(live) >= 1  # the other slot's report arrived
        assert len(await bus.range(dead)) == 1  # only the writer's entry
        assert actor._unsent is None  # nothing held back
    finally:
        await purge_prefix(bus, streams.prefix(run))
        await bus.close()
