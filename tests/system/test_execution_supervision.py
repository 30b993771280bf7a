"""The trainer's ExecutionActor is supervised: a Redis refusal (a key of the wrong type, an OOM
reply under maxmemory, any BusProtocolError) restarts it with backoff, logged on one line and
counted, and once the condition clears it serves again, no order lost or applied twice."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from actors.execution.actor import ExecutionActor
from actors.hosting import FRAME
from bus import Bus, BusProtocolError, RedisStreamBus, open_bus
from bus.testing import FaultyBus, eventually, redis_server
from contracts import KasminaConfig, KeyRing, Signer, Verifier, kinds, streams
from leyline import pb
from scenarios.sim import SimRuntime

pytestmark = pytest.mark.anyio

SLOT = "l0.s0"


class CountingRuntime(SimRuntime):
    """A SimRuntime that remembers every order submitted to it, in order."""

    def __init__(self) -> None:
        super().__init__([SLOT])
        self.submitted: list[str] = []

    def submit(self, order: pb.ExecutionOrder) -> None:
        self.submitted.append(order.order_id)
        super().submit(order)


async def _send_order(bus: Bus, run: str, ring: KeyRing, order_id: str) -> None:
    """A signed order for the slot, from its SeedActor, onto rank 0's inbox."""
    inbox = streams.inbox(run, "execution", "0")
    order = pb.ExecutionOrder(order_id=order_id, slot=SLOT, stage=pb.SEED_STAGE_GERMINATED)
    frame = Signer(ring, f"seed:{SLOT}").seal(kinds.EXEC_ORDER, order, stream=inbox)
    await bus.publish(inbox, {FRAME: frame, "kind": kinds.EXEC_ORDER.encode()})


@asynccontextmanager
async def _serving(bus: Bus, run: str, ring: KeyRing) -> AsyncIterator[ExecutionActor]:
    """Rank 0's ExecutionActor served on ``bus`` (beating every 50 ms) until the block ends."""
    actor = ExecutionActor(CountingRuntime(), bus=bus, run=run, signer=Signer(ring, "execution:0"),
                           verifier=Verifier(ring), config=KasminaConfig(),
                           heartbeat_s=0.05)  # fmt: skip
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        try:
            yield actor
        finally:
            await actor.stop()


async def _acked(bus: Bus, inbox: str) -> bool:
    """The inbox's group exists and has read and acked every entry."""
    info = await bus.info(inbox)
    done = [g.pending == 0 and g.last_delivered == info.last_id for g in info.groups]
    return bool(done) and all(done)


def _submitted(actor: ExecutionActor) -> list[str]:
    runtime = actor.runtime
    assert isinstance(runtime, CountingRuntime)
    return runtime.submitted


async def test_a_refused_commit_restarts_the_actor_and_the_order_applies_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two refused commits (BusProtocolError) end the actor's tasks twice: it is restarted both
    times, re-reads the pending order without submitting it again, and acks it on the third
    try; each restart is one log line with its reason and is counted."""
    run = "sup" + uuid.uuid4().hex[:8]
    inner = open_bus(f"memory://{run}")
    bus = FaultyBus(inner, {"commit"}, times=2, error=BusProtocolError)
    ring = KeyRing.generate()
    caplog.set_level(logging.WARNING, logger="kasmina.supervisor")
    with anyio.fail_after(10):
        async with _serving(bus, run, ring) as actor:  # type: ignore[arg-type]
            await _send_order(inner, run, ring, "o1")
            await eventually(lambda: _acked(inner, actor.inbox))
            assert actor.restarts == 2 and _submitted(actor) == ["o1"]
    lines = [r.getMessage() for r in caplog.records if "execution:0" in r.getMessage()]
    assert lines and all("\n" not in line and "BusProtocolError" in line for line in lines)
    await inner.close()


@asynccontextmanager
async def _private_redis() -> AsyncIterator[tuple[RedisStreamBus, str]]:
    with redis_server(aof=False) as server:
        bus = open_bus(server.url)
        assert isinstance(bus, RedisStreamBus)
        try:
            yield bus, "sup" + uuid.uuid4().hex[:8]
        finally:
            await bus.close()


async def _beats_after(bus: Bus, run: str, since_ns: int) -> bool:
    """A heartbeat of execution:0 written after ``since_ns``."""
    entries = await bus.range(streams.heartbeats(run), f"{since_ns // 1_000_000}-0")
    return len(entries) > 0


@pytest.mark.redis
async def test_a_registry_of_the_wrong_type_restarts_the_actor_until_it_is_restored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``registry:execution`` replaced by a hash (WRONGTYPE to the beat's registration) restarts
    the actor with backoff instead of ending it; an order sent meanwhile is applied exactly
    once after the key is restored, and the actor beats again."""
    ring = KeyRing.generate()
    caplog.set_level(logging.WARNING, logger="kasmina.supervisor")
    async with _private_redis() as (bus, run), _serving(bus, run, ring) as actor:
        registry = streams.registry(run, "execution")
        await eventually(lambda: _acked(bus, actor.inbox))  # serving: its group exists
        await bus.client.rename(registry, registry + ":saved")
        await bus.client.hset(registry, "x", "y")
        await eventually(lambda: _restarted(actor, 2), timeout_s=5)
        await _send_order(bus, run, ring, "o1")
        await bus.client.delete(registry)
        await bus.client.rename(registry + ":saved", registry)
        restored = time.time_ns()
        await eventually(lambda: _beats_after(bus, run, restored), timeout_s=10)
        await eventually(lambda: _acked(bus, actor.inbox), timeout_s=10)
        assert _submitted(actor) == ["o1"]
    assert any("WRONGTYPE" in r.getMessage() for r in caplog.records)


async def _restarted(actor: ExecutionActor, times: int) -> bool:
    return actor.restarts >= times


@pytest.mark.redis
async def test_a_full_redis_restarts_the_actor_until_memory_is_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under maxmemory with noeviction the heartbeat's OOM reply restarts the actor (one
    warning for the whole episode, however many restarts); once memory is freed it beats
    again, and the order sent just before the server filled up is applied exactly once."""
    ring = KeyRing.generate()
    caplog.set_level(logging.WARNING, logger="kasmina.supervisor")
    async with _private_redis() as (bus, run), _serving(bus, run, ring) as actor:
        await eventually(lambda: _acked(bus, actor.inbox))
        await _send_order(bus, run, ring, "o1")
        await bus.client.config_set("maxmemory", "1")
        await eventually(lambda: _restarted(actor, 3), timeout_s=5)
        await bus.client.config_set("maxmemory", "0")
        freed = time.time_ns()
        await eventually(lambda: _beats_after(bus, run, freed), timeout_s=10)
        await eventually(lambda: _acked(bus, actor.inbox), timeout_s=10)
        assert _submitted(actor) == ["o1"]
    oom = [r for r in caplog.records if "maxmemory" in r.getMessage()]
    assert len(oom) == 1 and oom[0].levelno == logging.WARNING


async def test_the_actor_ends_within_its_final_flush_bound_when_redis_is_gone() -> None:
    """With Redis killed, stopping the ExecutionActor (a trainer leaving ``attach``) still ends
    it: the last flush waits at most ``final_flush_s`` for Redis, not until Redis is back."""
    ring, run = KeyRing.generate(), f"exit-{uuid.uuid4().hex[:8]}"
    with redis_server(aof=False) as server:
        bus = RedisStreamBus.from_url(server.url, retries=0, backoff_cap_s=0.05)
        runtime = SimRuntime([SLOT], report_every=1)
        actor = ExecutionActor(runtime, bus=bus, run=run, signer=Signer(ring, "execution:0"),
                               verifier=Verifier(ring), config=KasminaConfig())  # fmt: skip
        actor.final_flush_s = 0.5
        ended = anyio.Event()

        async def serve(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            await actor.run(task_status=task_status)
            ended.set()

        async with anyio.create_task_group() as tg:
            await tg.start(serve)
            server.kill()
            runtime.on_step(1, 0.5)  # a step report queued after Redis went away
            await actor.stop()
            with anyio.move_on_after(15):
                await ended.wait()
            finished = ended.is_set()
            if not finished:  # let an endless last flush through, so that the test ends
                server.start()
        await bus.close()
    assert finished
