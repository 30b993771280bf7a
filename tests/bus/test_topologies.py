"""The bus beyond one server: a resharding Redis Cluster, a Sentinel failover, WAIT durability."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from bus import Append, BusUnavailable, Entry, Handled, RedisStreamBus
from bus.servers import LocalCluster, LocalSentinel, redis_cluster, redis_sentinel
from bus.testing import REDIS_SERVER, eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="needs redis-server"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A 3-primary cluster for this module."""
    with redis_cluster(primaries=3) as local:
        yield local


def _errorstat(port: int, code: str) -> int:
    client = redis.Redis(port=port)
    try:
        stats: dict[str, Any] = client.info("errorstats")
    finally:
        client.close()
    return int(stats.get(f"errorstat_{code}", {}).get("count", 0))


async def _read_all(bus: RedisStreamBus, stream: str, group: str, n: int) -> list[Entry]:
    await bus.ensure_group(stream, group)
    for i in range(n):
        await bus.publish(stream, {"n": str(i).encode()})
    return await bus.read(stream, group, "c", count=n, block_ms=100)


async def test_version_and_scan_work_on_a_cluster(cluster: LocalCluster) -> None:
    """Feature detection reads the server version; ``streams`` finds keys on every shard."""
    bus = RedisStreamBus.from_url(cluster.url)
    try:
        assert await bus.version() >= (7, 0)
        tags = [uuid.uuid4().hex[:8] for _ in range(12)]
        for tag in tags:
            await bus.publish(f"scan:{{{tag}}}:s", {"f": b"1"})
        found = await bus.streams("scan:*")
        assert found == sorted(f"scan:{{{t}}}:s" for t in tags)
        owners = {cluster.owner(cluster.keyslot(n)).port for n in found}
        assert len(owners) > 1  # the scan really crossed shards
    finally:
        await bus.close()


async def test_commit_during_a_resharding_lands_once(cluster: LocalCluster) -> None:
    """While a run's hash slot migrates: reads follow ASK, a commit whose keys are split between
    the nodes is refused (TRYAGAIN) and retried until the slot has moved, then lands exactly
    once; a client with the old slot map follows MOVED."""
    tag = uuid.uuid4().hex[:8]
    inbox, events, group = f"kasmina:{{{tag}}}:inbox", f"kasmina:{{{tag}}}:events", "g"
    bus = RedisStreamBus.from_url(cluster.url, retries=40, backoff_cap_s=0.1)
    try:
        entries = await _read_all(bus, inbox, group, 5)
        await bus.publish(events, {"e": b"0"})
        slot = cluster.keyslot(inbox)
        source = cluster.owner(slot)
        target = next(p for p in cluster.primaries if p is not source)
        cluster.begin_migration(slot, target)
        client = redis.Redis(port=source.port)
        try:  # move the inbox only: the run's keys are now split between source and target
            client.execute_command("MIGRATE", "127.0.0.1", target.port, inbox, 0, 5000)
        finally:
            client.close()
        assert [e.id for e in await bus.range(inbox)] == [e.id for e in entries]  # via ASK
        handled = [Handled(e, group, [Append(events, {"e": e.id.encode()})]) for e in entries]
        refused_before = _errorstat(target.port, "TRYAGAIN") + _errorstat(source.port, "TRYAGAIN")
        results: list[list[bool]] = []

        async def commit() -> None:
            results.append(await bus.commit(handled))

        async def refused() -> bool:
            now = _errorstat(target.port, "TRYAGAIN") + _errorstat(source.port, "TRYAGAIN")
            return now > refused_before

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit)
            await eventually(refused, timeout_s=10)
            assert not results  # still refused while the slot is split
            cluster.migrate_some(slot, target, 100, source=source)
            cluster.finish_migration(slot, target)
        assert results == [[True] * 5]
        assert cluster.owner(slot) is target
        logged = [e.fields["e"] for e in await bus.range(events)]
        assert logged == [b"0"] + [e.id.encode() for e in entries]
        assert await bus.commit(handled) == [False] * 5  # resent: nothing written twice
        assert (await bus.info(inbox)).groups[0].pending == 0
        stale = RedisStreamBus.from_url(cluster.url)  # learns the map, then it changes again
        try:
            await stale.publish(inbox, {"n": b"x"})
            cluster.migrate_slot(slot, source)
            await stale.publish(inbox, {"n": b"y"})  # MOVED followed
            assert [e.fields["n"] for e in await stale.range(inbox)][-2:] == [b"x", b"y"]
        finally:
            await stale.close()
    finally:
        await bus.close()


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    """A primary with two replicas (one left to confirm writes after a failover), 3 sentinels."""
    with redis_sentinel(replicas=2, aof=False) as setup:
        yield setup


async def test_bus_follows_a_sentinel_failover_without_losing_a_write(
    sentinel: LocalSentinel,
) -> None:
    """With ``wait=1`` every acknowledged entry survives a SIGKILL of the primary; the same bus
    object reconnects to the promoted replica and reads, commits and publishes there."""
    bus = RedisStreamBus.from_url(sentinel.url + "?wait=1", retries=1)
    stream, group = "kasmina:{fo}:inbox", "g"
    try:
        entries = await _read_all(bus, stream, group, 20)
        await bus.commit([Handled(e, group) for e in entries[:10]])
        old = sentinel.kill_primary()
        sentinel.wait_failover(old)

        async def publish() -> bool:
            try:
                await bus.publish(stream, {"n": b"after"})
            except BusUnavailable:
                return False
            return True

        await eventually(publish, timeout_s=30, interval_s=0.05)
        assert sentinel.primary() is not old
        kept = await bus.range(stream)
        assert [e.fields["n"] for e in kept] == [str(i).encode() for i in range(20)] + [b"after"]
        info = (await bus.info(stream)).groups[0]
        assert info.pending == 10  # the acks of the first ten survived too
        redelivered = await bus.read(stream, group, "c", pending_first=True)
        assert [e.id for e in redelivered] == [e.id for e in entries[10:]]
        assert await bus.commit([Handled(e, group) for e in redelivered]) == [True] * 10
    finally:
        await bus.close()


async def test_a_write_no_replica_confirms_is_not_acknowledged() -> None:
    """With ``wait=1`` and the only replica down, publish and commit raise BusUnavailable (the
    outcome is unknown) instead of acknowledging; once the replica is back, the resent commit
    writes nothing twice."""
    with redis_sentinel(replicas=1, aof=False) as setup:
        bus = RedisStreamBus.from_url(setup.url + "?wait=1&wait_timeout_ms=200", retries=0)
        stream, group = "kasmina:{w}:inbox", "g"
        try:
            entries = await _read_all(bus, stream, group, 3)
            replica = next(s for s in setup.servers if s is not setup.primary())
            replica.kill()
            with pytest.raises(BusUnavailable, match="not confirmed by 1 replica"):
                await bus.publish(stream, {"n": b"lonely"})
            handled = [
                Handled(e, group, [Append("kasmina:{w}:events", {"e": b"x"})]) for e in entries
            ]
            with pytest.raises(BusUnavailable, match="not confirmed"):
                await bus.commit(handled)
            await anyio.to_thread.run_sync(replica.start)
            await eventually(lambda: _replicas(setup), timeout_s=30)
            assert await bus.commit(handled) == [False] * 3  # it had landed on the primary
            assert len(await bus.range("kasmina:{w}:events")) == 3
            await bus.publish(stream, {"n": b"confirmed"})
        finally:
            await bus.close()


async def test_an_entry_found_after_a_lost_reply_counts_only_once_a_replica_holds_it() -> None:
    """With ``wait=1`` and the only replica down, an entry that is on the primary alone (an
    append whose confirmation failed) is not reported as written: BusUnavailable, so a sender
    tries again instead of counting a write the primary may lose; once the replica is back,
    the same look finds it."""
    with redis_sentinel(replicas=1, aof=False) as setup:
        bus = RedisStreamBus.from_url(setup.url + "?wait=1&wait_timeout_ms=200", retries=0)
        stream = "kasmina:{f}:inbox"
        try:
            await bus.publish(stream, {"m": b"held"})
            assert await bus.find_entry(stream, "m", b"held", "0-0") is not None
            replica = next(s for s in setup.servers if s is not setup.primary())
            replica.kill()
            with pytest.raises(BusUnavailable, match="not confirmed by 1 replica"):
                await bus.publish(stream, {"m": b"lonely"})
            with pytest.raises(BusUnavailable, match="not confirmed by 1 replica"):
                await bus.find_entry(stream, "m", b"lonely", "0-0")
            await anyio.to_thread.run_sync(replica.start)
            await eventually(lambda: _replicas(setup), timeout_s=30)
            assert await bus.find_entry(stream, "m", b"lonely", "0-0") is not None
        finally:
            await bus.close()


async def _replicas(setup: LocalSentinel) -> bool:
    return setup.replicas_of_primary() >= 1


def _role(port: int) -> list[Any]:
    """The first three items of ``ROLE`` of the server on ``port`` (a replica: its primary's
    host and port)."""
    client = redis.Redis(port=port)
    try:
        return list(client.execute_command("ROLE"))[:3]
    finally:
        client.close()


async def test_a_killed_primary_comes_back_as_a_replica_of_the_promoted_one() -> None:
    """After a failover, the killed primary (no AOF) is started again as a replica of the
    promoted server at once, not as an empty primary waiting for the sentinels to turn it: it
    copies the data, and writes with ``wait=1`` are confirmed as soon as it is in sync."""
    with redis_sentinel(replicas=1, aof=False) as setup:
        bus = RedisStreamBus.from_url(setup.url + "?wait=1", retries=0)
        stream = "kasmina:{back}:inbox"
        try:
            for i in range(5):
                await bus.publish(stream, {"n": str(i).encode()})
            old = setup.kill_primary()
            setup.wait_failover(old)
            new = setup.primary()
            await anyio.to_thread.run_sync(setup.start_again, old)
            assert _role(old.port) == [b"slave", b"127.0.0.1", new.port]

            async def confirmed() -> bool:
                try:
                    await bus.publish(stream, {"n": b"after"})
                except BusUnavailable:
                    return False
                return True

            await eventually(confirmed, timeout_s=30, interval_s=0.05)
            copy = redis.Redis(port=old.port)
            try:
                assert copy.xlen(stream) >= 6  # the entries before the failover, and after
            finally:
                copy.close()
            assert setup.primary() is new
        finally:
            await bus.close()


async def test_a_promoted_primary_restarted_stays_the_primary() -> None:
    """A replica promoted by the sentinels, killed and started again while they still name it
    (a long ``down-after``), comes back as the primary with its data (AOF), not as a replica of
    the server it was first started to follow."""
    with redis_sentinel(replicas=1, aof=True, down_after_ms=60_000) as setup:
        first = setup.primary()
        promoted = next(s for s in setup.servers if s is not first)
        sentinel = redis.Redis(port=setup.sentinels[0].port)
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", setup.service)
        finally:
            sentinel.close()
        setup.wait_failover(first)
        assert setup.primary() is promoted
        bus = RedisStreamBus.from_url(setup.url + "?wait=1", retries=0)
        try:
            await eventually(lambda: _replicas(setup), timeout_s=30)
            await bus.publish("kasmina:{p}:s", {"n": b"kept"})
            promoted.kill()
            await anyio.to_thread.run_sync(setup.start_again, promoted)
            assert _role(promoted.port)[0] == b"master"
            assert setup.primary() is promoted
            await eventually(lambda: _replicas(setup), timeout_s=30)
            kept = await bus.range("kasmina:{p}:s")
            assert [e.fields["n"] for e in kept] == [b"kept"]
        finally:
            await bus.close()


async def test_wait_on_a_cluster_asks_the_shard_that_took_the_write() -> None:
    """With ``wait=1`` on a cluster with a replica per primary, every kind of write of runs on
    different shards is confirmed by its own shard's replica; with one shard's replica down,
    that shard's writes raise BusUnavailable and the others' still succeed."""
    with redis_cluster(primaries=3, replicas=1) as cl:
        bus = RedisStreamBus.from_url(cl.url + "?wait=1&wait_timeout_ms=200", retries=0)
        try:
            tags: dict[int, str] = {}
            i = 0
            while len(tags) < 3:
                port = cl.owner(cl.keyslot(f"kasmina:{{t{i}}}:x")).port
                tags.setdefault(port, f"t{i}")
                i += 1
            for tag in tags.values():
                inbox, group = f"kasmina:{{{tag}}}:inbox", "g"
                entries = await _read_all(bus, inbox, group, 3)
                await bus.publish_many([Append(f"kasmina:{{{tag}}}:events", {"e": b"1"})])
                assert await bus.commit([Handled(entries[0], group)]) == [True]
                await bus.dead_letter(
                    entries[1], group, dead_stream=f"kasmina:{{{tag}}}:dead", reason="r"
                )
                await bus.set_value(f"kasmina:{{{tag}}}:v", b"v")
                await bus.register(f"kasmina:{{{tag}}}:reg", "m")
                assert (await bus.info(inbox)).groups[0].pending == 1
            first, second = list(tags.items())[:2]
            primary = next(p for p in cl.primaries if p.port == first[0])
            cl.replicas[cl.primaries.index(primary)].kill()
            with pytest.raises(BusUnavailable, match="not confirmed by 1 replica"):
                await bus.publish(f"kasmina:{{{first[1]}}}:inbox", {"n": b"x"})
            await bus.publish(f"kasmina:{{{second[1]}}}:inbox", {"n": b"x"})
        finally:
            await bus.close()


async def test_wait_on_a_cluster_follows_ask_and_moved() -> None:
    """With ``wait=1``, a write to a run whose slot is migrating and whose stream already moved
    follows the ASK to the target (confirmed by the target's replica) at once, and a client with
    the old slot map follows MOVED once the migration is done."""
    with redis_cluster(primaries=3, replicas=1) as cl:
        stream = "kasmina:{ask}:inbox:seed:a"
        slot = cl.keyslot(stream)
        source = cl.owner(slot)
        target = next(p for p in cl.primaries if p is not source)
        bus = RedisStreamBus.from_url(cl.url + "?wait=1&wait_timeout_ms=2000", retries=0)
        try:
            await bus.publish(stream, {"n": b"0"})  # the slot map learnt: the source owns it
            cl.begin_migration(slot, target)
            client = redis.Redis(port=source.port)
            try:
                client.execute_command("MIGRATE", "127.0.0.1", target.port, stream, 0, 5000)
            finally:
                client.close()
            await bus.publish(stream, {"n": b"1"})  # ASK, with no retry left
            held = redis.Redis(port=target.port)
            try:
                pipe = held.pipeline(transaction=False)
                pipe.execute_command("ASKING")
                pipe.xlen(stream)
                assert pipe.execute()[1] == 2  # both on the target
            finally:
                held.close()
            cl.finish_migration(slot, target)
            await bus.publish(stream, {"n": b"2"})  # MOVED: the map it holds names the source
            assert [e.fields["n"] for e in await bus.range(stream)] == [b"0", b"1", b"2"]
        finally:
            await bus.close()


@pytest.mark.slow
async def test_topology_bench_reports_ratios_against_one_server() -> None:
    """The topology figures name each arm, carry the one-server rate of the same sitting as their
    baseline, and measured a positive rate on every arm."""
    from benchmarks.topology_bench import run_topology_bench

    figures = await run_topology_bench(n=500, rounds=1)
    names = [f["bench"] for f in figures]
    assert names == [
        "bus.topology.single_e2e_rate",
        "bus.topology.cluster3_e2e_rate",
        "bus.topology.replica_nowait_e2e_rate",
        "bus.topology.replica_wait1_e2e_rate",
        "bus.topology.wait1_publish_round_trip",
    ]
    rates, (round_trip,) = figures[:4], figures[4:]
    base = rates[0]["value"]
    assert base > 0 and all(f["baseline"] == base and f["value"] > 0 for f in rates)
    assert all(f["ratio"] == round(f["value"] / base, 3) for f in rates)
    assert round_trip["unit"] == "ms" and round_trip["value"] > 0 and round_trip["baseline"] > 0


@pytest.mark.slow
async def test_a_consumer_keeps_committing_while_its_slot_migrates(cluster: LocalCluster) -> None:
    """A producer and a consumer (Consumer loop, commit with appends) run while the run's slot
    moves key by key to another primary and back: every entry is committed exactly once."""
    from bus import Consumer

    tag = uuid.uuid4().hex[:8]
    inbox, events, group = f"kasmina:{{{tag}}}:inbox", f"kasmina:{{{tag}}}:events", "g"
    bus = RedisStreamBus.from_url(cluster.url, retries=40, backoff_cap_s=0.1)
    total = 400
    try:
        await bus.ensure_group(inbox, group)
        consumer = Consumer(bus, inbox, group, "c", batch=16, block_ms=50,
                            dead_stream=f"kasmina:{{{tag}}}:dead")  # fmt: skip
        slot = cluster.keyslot(inbox)
        home = cluster.owner(slot)
        away = next(p for p in cluster.primaries if p is not home)
        done = 0

        async def produce() -> None:
            for i in range(total):
                n = str(i).encode()
                while True:  # a lost reply: look before sending again, as publishers do
                    try:
                        await bus.publish(inbox, {"n": n})
                        break
                    except BusUnavailable:
                        if any(e.fields["n"] == n for e in await bus.range(inbox, count=None)):
                            break
                await anyio.sleep(0.002)

        async def move() -> None:
            for target in (away, home):
                await anyio.to_thread.run_sync(
                    lambda t=target: cluster.migrate_slot(slot, t, batch=1)
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(move)
            async for batch in consumer.batches():
                appends = [[Append(events, {"n": e.fields["n"]})] for e in batch]
                await bus.commit(
                    [Handled(e, group, a) for e, a in zip(batch, appends, strict=True)]
                )
                done += len(batch)
                if done >= total:
                    await consumer.close()
        logged = sorted(int(e.fields["n"]) for e in await bus.range(events))
        assert logged == list(range(total))
        assert (await bus.info(inbox)).groups[0].pending == 0
        assert cluster.owner(slot) is home
    finally:
        await bus.close()
