"""Fault tests on a real redis-server: killed consumers, killed servers, deleted streams,
failures at every step of "append -> send -> ack". Nothing lost, nothing doubled."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.exceptions as rex

from bus import Append, Bus, BusUnavailable, Consumer, Handled, RedisStreamBus, open_bus
from bus.testing import FaultyBus, backdate, eventually, purge_prefix, redis_server

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def msgs_of(entries: list) -> list[bytes]:  # type: ignore[type-arg]
    return sorted(e.fields["msg"] for e in entries)


async def handle(bus: Bus, consumer: Consumer, batch: list, group: str, out: str) -> None:  # type: ignore[type-arg]
    """What an actor shell does: effects + dedupe + ack in one commit; on failure re-read."""
    handled = [
        Handled(e, group, [Append(out, {"msg": e.fields["msg"]})], e.fields["msg"].decode())
        for e in batch
    ]
    try:
        await bus.commit(handled)
    except BusUnavailable:
        consumer.rewind()


@pytest.mark.redis
async def test_killed_consumer_process_is_rescued_exactly_once(redis_url: str, prefix: str) -> None:
    """A consumer process SIGKILLed mid-batch: a survivor claims its entries; each effect once."""
    bus = open_bus(redis_url)
    s, out = prefix + "in", prefix + "out"
    msgs = [f"m{i:03d}".encode() for i in range(50)]
    try:
        await bus.ensure_group(s, "g")
        await bus.publish_many([Append(s, {"msg": m}) for m in msgs])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        script = str(Path(__file__).with_name("_consumer_proc.py"))
        args = [sys.executable, script, redis_url, s, "g", "victim", out, "7"]
        async with await anyio.open_process(args, env=env, cwd=ROOT) as proc:

            async def victim_hangs() -> bool:
                return len(await bus.range(out)) >= 7

            await eventually(victim_hangs, timeout_s=60)
            proc.kill()
            await proc.wait()
        (group,) = (await bus.info(s)).groups
        assert group.pending == 13  # the rest of its batch of 20, never acked
        # The victim also "crashed after commit, before the reply": the message comes again.
        await bus.publish(s, {"msg": msgs[3]})
        for e in await bus.range(s):
            await backdate(bus, s, "g", "victim", e.id, 120_000)
        survivor = Consumer(bus, s, "g", "survivor", block_ms=50, lease_ms=60_000,
                            dead_stream=prefix + "dead", claim_every_s=0.0)  # fmt: skip
        with anyio.fail_after(30):
            async for batch in survivor.batches():
                await handle(bus, survivor, batch, "g", out)
                info = await bus.info(s)
                if info.groups[0].pending == 0 and info.groups[0].lag == 0:
                    await survivor.close()
        effects = await bus.range(out)
        assert msgs_of(effects) == msgs
        assert {e.fields["by"] for e in effects if "by" in e.fields} == {b"victim"}
        assert sum(1 for e in effects if "by" in e.fields) == 7
    finally:
        await purge_prefix(bus, prefix)
        await bus.close()


@pytest.mark.redis
async def test_server_killed_and_restarted_loses_no_acknowledged_publish() -> None:
    """redis-server (AOF, fsync always) SIGKILLed and restarted: every acked publish survives
    and the running consumer resumes by itself, each effect exactly once."""
    with redis_server(aof=True, appendfsync="always") as server:
        bus = RedisStreamBus.from_url(server.url, retries=1, backoff_cap_s=0.1)
        s, out = "t:{k}:in", "t:{k}:out"
        consumer = Consumer(bus, s, "g", "c", block_ms=100, dead_stream="t:{k}:dead",
                            backoff_base_s=0.02, backoff_cap_s=0.2)  # fmt: skip
        published: list[str] = []

        async def consume() -> None:
            async for batch in consumer.batches():
                await handle(bus, consumer, batch, "g", out)

        async def effects(n: int) -> bool:
            try:
                return len(await bus.range(out)) >= n
            except BusUnavailable:
                return False

        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    for i in range(30):
                        published.append(await bus.publish(s, {"msg": f"a{i}".encode()}))
                    await eventually(lambda: effects(30))
                    for i in range(30, 40):  # published while the consumer may be mid-batch
                        published.append(await bus.publish(s, {"msg": f"a{i}".encode()}))
                    await anyio.to_thread.run_sync(server.kill)
                    with pytest.raises(BusUnavailable):
                        await bus.publish(s, {"msg": b"lost"})
                    await anyio.to_thread.run_sync(server.restart)
                    assert [e.id for e in await bus.range(s)] == published
                    for i in range(40, 60):
                        published.append(await bus.publish(s, {"msg": f"a{i}".encode()}))
                    await eventually(lambda: effects(60))
                    await consumer.close()
            assert msgs_of(await bus.range(out)) == sorted(f"a{i}".encode() for i in range(60))
        finally:
            await bus.close()


class _LostReply:
    """A real client whose next XREADGROUP runs on the server and then loses its reply."""

    def __init__(self, client: Any) -> None:
        self._client, self.armed = client, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self._client.xreadgroup(*args, **kwargs)
        if self.armed:
            self.armed = False
            raise rex.ConnectionError("reply lost")
        return reply


@pytest.mark.redis
async def test_read_whose_reply_is_lost_is_not_retried_and_its_entries_are_reread(
    redis_url: str, prefix: str
) -> None:
    """A new-entry read that the server ran but whose reply was lost raises (a retry would skip
    the delivered entries); the consumer then hands them out from its pending list at once."""
    bus = RedisStreamBus.from_url(redis_url, retries=3, backoff_cap_s=0.01)
    s = prefix + "in"
    try:
        await bus.ensure_group(s, "g")
        await bus.publish(s, {"msg": b"m0"})
        real, bus.client = bus.client, _LostReply(bus.client)
        with pytest.raises(BusUnavailable):
            await bus.read(s, "g", "c", block_ms=10)
        consumer = Consumer(bus, s, "g", "c", block_ms=10, lease_ms=600_000,
                            dead_stream=prefix + "dead", backoff_base_s=0.0)  # fmt: skip
        with anyio.fail_after(10):
            async for batch in consumer.batches():
                assert [e.fields["msg"] for e in batch] == [b"m0"]
                assert batch[0].deliveries == 2
                break
        bus.client = real
    finally:
        await purge_prefix(bus, prefix)
        await bus.close()


@pytest.mark.redis
async def test_stream_deleted_during_blocking_read_recovers_without_spinning() -> None:
    """Deleting the stream under a blocked read: the group is recreated, the consumer resumes,
    and it issues a bounded number of commands meanwhile (counted by INFO commandstats)."""
    with redis_server(aof=False) as server:
        bus = RedisStreamBus.from_url(server.url)
        s = "t:{k}:in"
        consumer = Consumer(bus, s, "g", "c", block_ms=300, claim_every_s=60.0,
                            dead_stream="t:{k}:dead")  # fmt: skip
        seen: list[bytes] = []

        async def calls() -> int:
            stats = await bus.client.info("commandstats")
            return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

        async def consume() -> None:
            async for batch in consumer.batches():
                seen.extend(e.fields["msg"] for e in batch)

        async def blocked_twice() -> bool:
            return await calls() >= 3  # pending read, then at least two blocking reads

        async def healed() -> bool:
            return [g.name for g in (await bus.info(s)).groups] == ["g"]

        async def delivered() -> bool:
            return seen == [b"after"]

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await eventually(blocked_twice)
                await bus.delete(s)
                await eventually(healed)
                before = await calls()
                await anyio.sleep(1.2)  # a measurement window, not synchronisation
                spent = await calls() - before
                await bus.publish(s, {"msg": b"after"})
                await eventually(delivered)
                await consumer.close()
        assert spent <= 1.2 / 0.3 + 2, spent
        await bus.close()


@pytest.mark.parametrize(
    "step",
    ["read:after", "commit:before", "commit:after", "claim_stale:before", "publish:after",
     "ensure_group:before", "dead_letter:before"],
)  # fmt: skip
@pytest.mark.parametrize(
    "backend", ["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)]
)
async def test_failure_at_each_step_loses_and_doubles_nothing(
    step: str, backend: str, prefix: str, request: pytest.FixtureRequest
) -> None:
    """A failure before/after each step of publish -> read -> commit (effects + ack) leaves
    every message's effect applied exactly once."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else f"{backend}://"
    inner = open_bus(url)
    bus = FaultyBus(inner, {step}, times=2)
    s, out, dead = prefix + "in", prefix + "out", prefix + "dead"
    msgs = [f"m{i}".encode() for i in range(20)]
    consumer = Consumer(bus, s, "g", "c", batch=7, block_ms=20, lease_ms=60_000,
                        max_deliveries=4, dead_stream=dead, claim_every_s=0.0,
                        backoff_base_s=0.001, backoff_cap_s=0.01)  # fmt: skip
    try:
        await inner.ensure_group(s, "g")
        await inner.publish(s, {"msg": b"poison"})
        for m in msgs:
            while True:  # a producer retries; a retry after a lost reply is a duplicate
                try:
                    await bus.publish(s, {"msg": m})
                    break
                except BusUnavailable:
                    continue

        async def consume() -> None:
            async for batch in consumer.batches():
                for e in batch:
                    if e.fields["msg"] == b"poison":
                        await backdate(inner, s, "g", "c", e.id, 120_000)
                live = [e for e in batch if e.fields["msg"] != b"poison"]
                await handle(bus, consumer, live, "g", out)

        async def drained() -> bool:
            (group,) = (await inner.info(s)).groups
            return group.pending == 0 and group.lag == 0

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await eventually(drained)
                await consumer.close()
        assert msgs_of(await inner.range(out)) == sorted(msgs)
        assert [e.fields["msg"] for e in await inner.range(dead)] == [b"poison"]
        assert bus.failures >= 1
    finally:
        await purge_prefix(inner, prefix)
        await bus.close()
