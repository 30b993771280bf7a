"""Unit tests of the bus package: factory, MemoryBus clock, retention core, fault wrapper,
consumer back-off, and the raw fakeredis-vs-real blocking differences the bus works around."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
import redis.exceptions

import bus
from bus import (
    Append,
    BusUnavailable,
    Consumer,
    GroupInfo,
    MemoryBus,
    RedisStreamBus,
    StreamInfo,
    open_bus,
)
from bus.retention import clamp_trim_id, safe_trim_id_of
from bus.testing import FaultyBus, backdate, redis_server

pytestmark = pytest.mark.anyio


def test_public_surface() -> None:
    """bus.__all__ names exactly the public API and every name resolves."""
    assert all(hasattr(bus, name) for name in bus.__all__)
    for name in ("Bus", "Entry", "Append", "Handled", "StreamInfo", "GroupInfo", "Consumer",
                 "RedisStreamBus", "MemoryBus", "open_bus", "BusError", "BusClosed",
                 "BusUnavailable", "BusProtocolError", "Recording", "record", "EntrySource"):  # fmt: skip
        assert name in bus.__all__


async def test_open_bus_shares_named_servers() -> None:
    """fakeredis://name and memory://name share state between bus objects; unnamed ones don't."""
    for scheme in ("fakeredis", "memory"):
        a, b, c = (
            open_bus(f"{scheme}://shared-x"),
            open_bus(f"{scheme}://shared-x"),
            open_bus(f"{scheme}://"),
        )
        await a.publish("s", {"k": b"v"})
        assert len(await b.range("s")) == 1 and await c.range("s") == []
        for x in (a, b, c):
            await x.close()
    assert isinstance(open_bus("redis://127.0.0.1:1/0"), RedisStreamBus)
    with pytest.raises(ValueError, match="unsupported"):
        open_bus("kafka://x")


async def test_memory_bus_idle_time_follows_injected_clock() -> None:
    """MemoryBus idle time and ids come from the injected clock (no sleeping)."""
    now = [1_000]
    mem = MemoryBus(clock=lambda: now[0])
    await mem.ensure_group("s", "g")
    first = await mem.publish("s", {"k": b"1"})
    assert first == "1000-0" and await mem.publish("s", {"k": b"2"}) == "1000-1"
    await mem.read("s", "g", "a", block_ms=0)
    assert await mem.claim_stale("s", "g", "b", min_idle_ms=500) == []
    now[0] += 600
    assert [e.deliveries for e in await mem.claim_stale("s", "g", "b", min_idle_ms=500)] == [2, 2]
    await backdate(mem, "s", "g", "c", first, 10_000)
    assert [e.id for e in await mem.claim_stale("s", "g", "d", min_idle_ms=5_000)] == [first]


async def test_memory_dedupe_marks_expire() -> None:
    """Processed marks and claimed keys expire after their TTL on the bus clock."""
    now = [0]
    mem = MemoryBus(clock=lambda: now[0])
    assert await mem.claim_key("n", "a", 100) is None
    assert await mem.claim_key("n", "b", 100) == "a"
    now[0] = 100
    assert await mem.claim_key("n", "b", 100) is None


def test_safe_trim_id_core() -> None:
    """The safe trim id is the minimum of pending, last-delivered and watermark ids."""
    g1 = GroupInfo("a", 1, 2, 0, "9-0", oldest_pending="5-0")
    g2 = GroupInfo("b", 1, 0, 3, "7-0")
    info = StreamInfo("s", 10, "10-0", (g1, g2))
    assert safe_trim_id_of(info, None) == "5-0"
    assert safe_trim_id_of(info, "3-1") == "3-1"
    assert safe_trim_id_of(StreamInfo("s", 10, "10-0", ()), None) == "10-1"
    assert clamp_trim_id("20-0", "5-0") == "5-0" and clamp_trim_id("2-0", "5-0") == "2-0"


async def test_faulty_bus_steps() -> None:
    """FaultyBus fails before (nothing happens) or after (it happened) an op, a bounded number
    of times, and counts calls."""
    inner = MemoryBus()
    before = FaultyBus(inner, {"publish"}, times=1)
    with pytest.raises(BusUnavailable):
        await before.publish("s", {"k": b"1"})
    await before.publish("s", {"k": b"2"})
    after = FaultyBus(inner, {"publish_many:after"})
    with pytest.raises(BusUnavailable):
        await after.publish_many([Append("s", {"k": b"3"})])
    assert [e.fields["k"] for e in await inner.range("s")] == [b"2", b"3"]
    assert before.calls["publish"] == 2 and before.failures == 1


async def test_consumer_backs_off_while_bus_unavailable() -> None:
    """While every call fails, the consumer retries with growing back-off, not a busy loop."""
    faulty = FaultyBus(MemoryBus(), {"ensure_group", "read"})
    consumer = Consumer(faulty, "s", "g", "c", dead_stream="d", backoff_base_s=0.02,
                        backoff_cap_s=0.1)  # fmt: skip
    import anyio

    with anyio.move_on_after(0.6):
        async for _ in consumer.batches():
            pass
    assert 3 <= consumer.errors <= 20
    faulty.heal()
    await faulty.publish("s", {"k": b"v"})
    with anyio.fail_after(5):
        async for batch in consumer.batches():
            assert [e.fields for e in batch] == [{"k": b"v"}]
            break


async def test_fakeredis_read_polls_and_waits() -> None:
    """On fakeredis the bus never sends BLOCK (unreliable there) yet its read still waits."""
    import anyio

    client = fakeredis.FakeAsyncRedis(version=(7, 0))
    await client.xgroup_create("s", "g", id="0", mkstream=True)
    fake = RedisStreamBus(client)
    t0 = anyio.current_time()
    assert await fake.read("s", "g", "c", block_ms=200) == []
    assert anyio.current_time() - t0 >= 0.18
    await fake.close()


@pytest.mark.redis
async def test_real_server_blocking_semantics(redis_url: str, prefix: str) -> None:
    """On a real server BLOCK waits (row 1), returns present entries at once without COUNT
    (row 3), and stays under the socket timeout."""
    import anyio

    client = aioredis.Redis.from_url(redis_url)
    s = prefix + "s"
    try:
        await client.xgroup_create(s, "g", id="0", mkstream=True)
        t0 = anyio.current_time()
        assert not await client.xreadgroup("g", "c", {s: ">"}, count=10, block=300)
        assert anyio.current_time() - t0 >= 0.28
        await client.xadd(s, {"a": "1"})
        await client.xadd(s, {"a": "2"})
        t0 = anyio.current_time()
        reply: Any = await client.xreadgroup("g", "c", {s: ">"}, block=3000)
        assert len(reply[0][1]) == 2 and anyio.current_time() - t0 < 1
        rb = RedisStreamBus.from_url(redis_url, socket_timeout=1.0)
        assert rb.max_block_ms == 500
        t0 = anyio.current_time()
        assert await rb.read(s, "g", "c", block_ms=10_000) == []
        assert anyio.current_time() - t0 < 1.0
        assert await rb.version() >= (7, 0)
        await rb.close()
    finally:
        await client.delete(s)
        await client.aclose()


def test_fast_packing_matches_redis_py() -> None:
    """The hiredis command packer of from_url() sends the same bytes redis-py's own packer does."""
    from redis.asyncio.connection import Connection

    from bus.redis_codec import _fast_packing

    fast_cls = _fast_packing(Connection)
    assert _fast_packing(fast_cls) is fast_cls
    fast, slow = fast_cls(), Connection()
    for args in (
        ("XADD", "s", "MAXLEN", "~", 10, "*", "k", b"\x00\xff", "\u00e9", -(2**70)),
        ("XINFO STREAM", "s"),
        (b"CONFIG GET", b"x"),
        ("SET", "k", 0.1),
        ("SET", "k", memoryview(b"ab")),
    ):
        assert b"".join(fast.pack_command(*args)) == b"".join(slow.pack_command(*args))
    with pytest.raises(redis.exceptions.DataError):
        fast.pack_command("SET", "k", True)
    pool = RedisStreamBus.from_url("redis://127.0.0.1:1/0").client.connection_pool
    assert getattr(pool.connection_class, "_kasmina_fast", False)


def test_entry_fields_decode_the_same_whatever_the_reply_shape() -> None:
    """An entry's fields as bytes by name: one field or several, from the flat list the server
    sends or redis-py's dict, and str or int values of a decoding client turned into bytes."""
    from bus.redis_codec import _fields

    frame = b"\x00\x9b\xff"
    assert _fields([b"f", frame]) == {"f": frame} == _fields({b"f": frame})
    assert _fields([b"f", "text"]) == {"f": b"text"} == _fields(["f", "text"])
    assert _fields([b"n", 7]) == {"n": b"7"}
    assert _fields([b"a", b"1", b"b", b"2"]) == {"a": b"1", "b": b"2"}
    assert _fields([b"a", b"1", b"a", b"2"]) == {"a": b"2"} == _fields([b"a", b"1", "a", b"2"])
    assert _fields([b"\xff", b"1", b"k", "x"]) == {"\\xff": b"1", "k": b"x"}
    assert _fields([b"a", 1, b"b", b"2", b"c", b"3"]) == {"a": b"1", "b": b"2", "c": b"3"}
    assert _fields([]) == {} == _fields(None)
    with pytest.raises(ValueError):
        _fields([b"a", b"1", b"b"])


def test_new_entries_equal_entries_built_by_the_constructor() -> None:
    """Entries built slot by slot equal and print like the dataclass's own, whatever the
    reply shape of their fields; they stay frozen."""
    import dataclasses

    from bus import Entry
    from bus.redis_codec import _fields, _new_entries

    rows = [("1-0", [b"f", b"\x00"]), ("1-1", [b"a", b"1", b"b", b"2"]), ("2-0", None)]
    built = _new_entries("s", rows)
    assert built == [Entry("s", i, _fields(raw), 1) for i, raw in rows]
    assert [repr(e) for e in built] == [repr(Entry("s", i, _fields(raw))) for i, raw in rows]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].id = "9-9"  # type: ignore[misc]
    assert _new_entries("s", []) == []


@pytest.mark.redis
def test_throwaway_server_restart_keeps_aof_data() -> None:
    """redis_server(): kill -9 + restart on the same port reloads the AOF."""
    import redis

    with redis_server(aof=True, appendfsync="always") as server:
        c = redis.Redis.from_url(server.url)
        c.set("k", "v")
        c.close()
        server.kill()
        server.restart()
        c = redis.Redis.from_url(server.url)
        assert c.get("k") == b"v"
        c.close()
