"""``Bus.info`` on Redis: the same figures as ``XINFO``, without moving any entry to the client
(a writer's huge first or last entry would otherwise travel on every call of the hot paths)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bus import Bus, BusProtocolError, RedisStreamBus, open_bus
from bus.testing import redis_server

pytestmark = pytest.mark.anyio
BIG = 4 * 1024 * 1024


async def _shaped(bus: RedisStreamBus, stream: str) -> None:
    """A stream with two groups (one behind with a pending entry, one never read) and its last
    entry deleted (its last generated id is no entry's)."""
    await bus.ensure_group(stream, "reader")
    await bus.ensure_group(stream, "idle")
    for i in range(4):
        await bus.publish(stream, {"m": str(i).encode()})
    await bus.client.xreadgroup("reader", "c", {stream: ">"}, count=2)
    await bus.client.xack(stream, "reader", (await bus.client.xrange(stream, count=1))[0][0])
    last = (await bus.client.xrevrange(stream, count=1))[0][0]
    await bus.client.xdel(stream, last)


@pytest.mark.parametrize("backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def test_info_gives_what_xinfo_gives(backend: str, redis_url: str, prefix: str) -> None:
    """Length, last generated id, and per group consumers, pending, lag, last delivered and
    oldest pending id (unless not asked for) equal XINFO's, for a missing stream, an empty one and a shaped
    one; the script leaves no group behind."""
    bus = open_bus(redis_url if backend == "redis" else f"fakeredis://{prefix}")
    assert isinstance(bus, RedisStreamBus)
    try:
        missing, empty, shaped = (f"{prefix}{n}" for n in ("missing", "empty", "shaped"))
        await bus.ensure_group(empty, "g")
        await _shaped(bus, shaped)
        for stream in (missing, empty, shaped):
            assert await bus.info(stream) == await bus._xinfo(stream)
            assert await bus.info(stream, oldest=False) == await bus._xinfo(stream, oldest=False)
        assert all(g.oldest_pending is None for g in (await bus.info(shaped, oldest=False)).groups)
        info = await bus.info(shaped)
        assert (info.length, sorted(g.name for g in info.groups)) == (3, ["idle", "reader"])
        reader = next(g for g in info.groups if g.name == "reader")
        assert reader.pending == 1 and reader.lag and reader.oldest_pending is not None
        assert len(await bus.client.xinfo_groups(shaped)) == 2
    finally:
        await bus.delete(*(f"{prefix}{n}" for n in ("empty", "shaped")))
        await bus.close()


@pytest.mark.redis
async def test_info_does_not_move_a_huge_first_or_last_entry() -> None:
    """With a 4 MiB entry first and last in a stream, ``info`` costs the server under 4 KiB of
    output (``XINFO STREAM`` sends both entries whole: over 8 MiB)."""
    with redis_server(aof=False) as server:
        bus = open_bus(server.url)
        assert isinstance(bus, RedisStreamBus)
        probe = aioredis.Redis.from_url(server.url)
        try:
            stream = "kasmina:{huge}:inbox:gate"
            await bus.ensure_group(stream, "actor:gate")
            await bus.publish(stream, {"m": b"x" * BIG})
            await bus.publish(stream, {"m": b"y"})
            await bus.publish(stream, {"m": b"z" * BIG})

            async def sent() -> int:
                return int((await probe.info("stats"))["total_net_output_bytes"])

            before = await sent()
            info = await bus.info(stream)
            cheap = await sent() - before
            before = await sent()
            assert await bus._xinfo(stream) == info
            dear = await sent() - before
            assert info.length == 3 and cheap < 4096 < 2 * BIG < dear
        finally:
            await probe.aclose()
            await bus.close()


@pytest.mark.parametrize("backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def test_info_of_a_key_of_another_type_is_a_protocol_error(
    backend: str, redis_url: str, prefix: str
) -> None:
    """A writer's string where a stream should be: ``info`` raises BusProtocolError, as before."""
    bus = open_bus(redis_url if backend == "redis" else f"fakeredis://{prefix}")
    assert isinstance(bus, RedisStreamBus)
    try:
        await bus.client.set(f"{prefix}s", b"not a stream")
        with pytest.raises(BusProtocolError):
            await bus.info(f"{prefix}s")
    finally:
        await bus.delete(f"{prefix}s")
        await bus.close()


@pytest.mark.redis
async def test_info_on_a_read_only_replica_or_without_replicas_reads_xinfo() -> None:
    """Where the server refuses the script's writes (a read-only replica; a primary short of
    ``min-replicas-to-write``), ``info`` gives XINFO's figures instead of an error."""
    import anyio

    with redis_server(aof=False) as primary, redis_server(aof=False) as replica:
        writer = aioredis.Redis.from_url(primary.url)
        follower = aioredis.Redis.from_url(replica.url)
        try:
            await writer.xgroup_create("kasmina:{ro}:s", "g", id="0", mkstream=True)
            await writer.xadd("kasmina:{ro}:s", {"m": b"1"})
            await follower.replicaof("127.0.0.1", primary.port)
            with anyio.fail_after(20):
                while await follower.xlen("kasmina:{ro}:s") != 1:
                    await anyio.sleep(0.05)
            await writer.config_set("min-replicas-to-write", 5)
            for url in (replica.url, primary.url):
                bus = open_bus(url)
                assert isinstance(bus, RedisStreamBus)
                try:
                    info = await bus.info("kasmina:{ro}:s")
                    assert info == await bus._xinfo("kasmina:{ro}:s")
                    assert (info.length, [g.name for g in info.groups]) == (1, ["g"])
                finally:
                    await bus.close()
        finally:
            await writer.aclose()
            await follower.aclose()


@pytest.mark.parametrize(
    "backend", ["memory", "fakeredis", pytest.param("redis", marks=pytest.mark.redis)]
)
async def test_info_of_one_group_reports_that_group_alone(
    backend: str, redis_url: str, prefix: str
) -> None:
    """``group=`` gives the stream's figures with that group alone (a writer's other groups are
    not reported), and no group when it does not exist."""
    bus = open_bus(redis_url if backend == "redis" else f"{backend}://{prefix}")
    stream = f"{prefix}shaped"
    try:
        await _shaped_any(bus, stream)
        whole = await bus.info(stream)
        mine = await bus.info(stream, group="reader")
        assert (mine.length, mine.last_id) == (whole.length, whole.last_id)
        assert mine.groups == tuple(g for g in whole.groups if g.name == "reader")
        assert (await bus.info(stream, group="nobody")).groups == ()
    finally:
        await bus.delete(stream)
        await bus.close()


async def _shaped_any(bus: Bus, stream: str) -> None:
    """Two groups on a stream of three entries, one of them read up to the second."""
    await bus.ensure_group(stream, "reader")
    await bus.ensure_group(stream, "other")
    for i in range(3):
        await bus.publish(stream, {"m": str(i).encode()})
    await bus.read(stream, "reader", "c", count=2, block_ms=0)
