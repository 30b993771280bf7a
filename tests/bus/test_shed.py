"""Shedding inside Redis (scripts SHED and SHED_SKIP): which entries a flooded group skips, that
the skip and its record are one write, and that nothing else moves."""

from __future__ import annotations

import pytest

from bus import Append, Bus, Fence, Fenced, RedisStreamBus, Shedding, ShedRange, open_bus
from bus.testing import redis_server

pytestmark = pytest.mark.anyio

NEEDLE = b"seed.command"


async def _inbox(bus: Bus, stream: str, n: int, *, read: int) -> list[str]:
    """``n`` entries (every 7th holding the needle), ``read`` of them delivered to the group."""
    await bus.ensure_group(stream, "g")
    ids = await bus.publish_many(
        [Append(stream, {"m": b"cmd " + NEEDLE if i % 7 == 0 else b"junk"}) for i in range(n)]
    )
    if read:
        assert len(await bus.read(stream, "g", "c", count=read, block_ms=0)) == read
    return ids


async def _shed(bus: Bus, stream: str, *, keep: int, limit: int = 10_000) -> ShedRange:
    assert isinstance(bus, Shedding)
    return await bus.shed(
        stream, "g", keep=keep, limit=limit, claims=3, needle=NEEDLE, max_bytes=64, field="m"
    )


async def test_redis_bus_sheds_inside_redis_and_the_memory_bus_does_not() -> None:
    """Only a Redis bus offers shedding inside the store; the in-memory bus sheds in the actor."""
    assert issubclass(RedisStreamBus, Shedding)
    assert not isinstance(open_bus("memory://x"), Shedding)


async def test_shed_names_the_undelivered_entries_but_the_newest_keep_and_changes_nothing(
    redis_url: str, prefix: str
) -> None:
    """2000 entries, 256 delivered, keep 768: the 976 after the 256th are named (first, last, the
    last-delivered id before them), with the first 3 that hold the needle; the group is untouched."""
    bus = open_bus(redis_url)
    s = prefix + "inbox"
    try:
        ids = await _inbox(bus, s, 2000, read=256)
        before = await bus.info(s)
        shed = await _shed(bus, s, keep=768)
        assert (shed.count, shed.after, shed.first, shed.last) == (
            976,
            ids[255],
            ids[256],
            ids[1231],
        )
        assert [c.id for c in shed.claims] == [ids[259], ids[266], ids[273]]  # multiples of 7
        assert await bus.info(s) == before
    finally:
        await bus.delete(s)
        await bus.close()


async def test_shed_is_capped_by_limit_and_empty_within_keep(redis_url: str, prefix: str) -> None:
    """At most ``limit`` entries, oldest first; none when the undelivered entries fit in ``keep``."""
    bus = open_bus(redis_url)
    s = prefix + "inbox"
    try:
        ids = await _inbox(bus, s, 300, read=0)
        capped = await _shed(bus, s, keep=10, limit=50)
        assert (capped.count, capped.after, capped.first, capped.last) == (
            50,
            "0-0",
            ids[0],
            ids[49],
        )
        assert (await _shed(bus, s, keep=300)).count == 0
        assert (await _shed(bus, s, keep=299)).count == 1
    finally:
        await bus.delete(s)
        await bus.close()


async def test_skip_moves_the_group_and_writes_the_record_once(redis_url: str, prefix: str) -> None:
    """The group skips the shed entries with their record in one write: the next read is the first
    kept entry, the lag counts exactly the kept ones, and a resent skip writes nothing."""
    bus = open_bus(redis_url)
    s, rec = prefix + "inbox", prefix + "rejected"
    try:
        ids = await _inbox(bus, s, 2000, read=256)
        shed = await _shed(bus, s, keep=768)
        assert isinstance(bus, Shedding)
        assert await bus.skip(shed, "g", [Append(rec, {"r": b"overloaded"})]) == 976
        assert await bus.skip(shed, "g", [Append(rec, {"r": b"overloaded"})]) == 0
        assert [e.fields for e in await bus.range(rec)] == [{"r": b"overloaded"}]
        (group,) = (await bus.info(s)).groups
        assert (group.pending, group.lag, group.last_delivered) == (256, 768, ids[1231])
        (nxt,) = await bus.read(s, "g", "c", count=1, block_ms=0)
        assert nxt.id == ids[1232]
    finally:
        await bus.delete(s, rec)
        await bus.close()


async def test_skip_under_a_fence_not_held_writes_nothing(redis_url: str, prefix: str) -> None:
    """A process that lost its lease cannot skip: Fenced, the group and the record stream unmoved."""
    bus = open_bus(redis_url)
    s, rec, lease = prefix + "inbox", prefix + "rejected", prefix + "lease"
    try:
        await _inbox(bus, s, 100, read=10)
        shed = await _shed(bus, s, keep=20)
        await bus.set_value(lease, b"someone-else", ttl_ms=10_000)
        before = await bus.info(s)
        assert isinstance(bus, Shedding)
        with pytest.raises(Fenced):
            await bus.skip(shed, "g", [Append(rec, {"r": b"x"})], fence=Fence(lease, "me", 10_000))
        assert await bus.info(s) == before and (await bus.info(rec)).length == 0
    finally:
        await bus.delete(s, rec, lease)
        await bus.close()


async def test_skip_resent_under_its_fence_reports_the_first_try(
    redis_url: str, prefix: str
) -> None:
    """A skip resent under the fence it holds (its first reply lost) answers the count the first
    try skipped, and the record stays written once; without a fence a resend answers 0."""
    bus = open_bus(redis_url)
    s, rec, lease = prefix + "inbox", prefix + "rejected", prefix + "lease"
    try:
        await _inbox(bus, s, 100, read=10)
        shed = await _shed(bus, s, keep=20)
        await bus.set_value(lease, b"me", ttl_ms=10_000)
        fence = Fence(lease, "me", 10_000)
        assert isinstance(bus, Shedding)
        record = [Append(rec, {"r": b"overloaded"})]
        assert await bus.skip(shed, "g", record, fence=fence) == shed.count == 70
        assert await bus.skip(shed, "g", record, fence=fence) == 70
        assert await bus.skip(shed, "g", record) == 0
        assert (await bus.info(rec)).length == 1
        (group,) = (await bus.info(s)).groups
        assert (group.last_delivered, group.lag) == (shed.last, 20)
    finally:
        await bus.delete(s, rec, lease)
        await bus.close()


async def _large_inbox(bus: Bus, stream: str, n: int, size: int) -> list[str]:
    """``n`` entries of about ``size`` bytes each (every 3rd holding the needle) after one
    delivered small entry (the batch in hand), whose id is not returned."""
    await bus.ensure_group(stream, "g")
    await bus.publish(stream, {"m": b"in hand"})
    assert len(await bus.read(stream, "g", "c", count=1, block_ms=0)) == 1
    blob = b"x" * size
    return await bus.publish_many(
        [Append(stream, {"m": (NEEDLE if i % 3 == 0 else b"") + blob}) for i in range(n)]
    )


async def test_shed_of_large_entries_reads_about_its_budget_per_call(
    redis_url: str, prefix: str
) -> None:
    """200 entries of 64 KiB, keep 10, a budget of 1 MiB: one call names only the oldest
    entries that fit in about the budget (never the whole backlog, 12.8 MiB), the claims among
    them; skipping call after call sheds exactly the 190 one unbounded call would, in order."""
    bus = open_bus(redis_url)
    s, size, budget = prefix + "inbox", 64 << 10, 1 << 20
    assert isinstance(bus, Shedding)
    try:
        ids = await _large_inbox(bus, s, 200, size)
        shed: list[str] = []
        for _ in range(200):
            got = await bus.shed(
                s, "g", keep=10, limit=4096, claims=3, needle=NEEDLE, max_bytes=1 << 20,
                field="m", budget=budget,
            )  # fmt: skip
            if not got.count:
                break
            assert 1 <= got.count <= budget // size + 1
            at = len(shed)
            assert (got.first, got.last) == (ids[at], ids[at + got.count - 1])
            assert [c.id for c in got.claims] == [
                i for i in ids[at : at + got.count] if ids.index(i) % 3 == 0
            ][:3]
            assert await bus.skip(got, "g", []) == got.count
            shed += ids[at : at + got.count]
        assert shed == ids[:190]
        (group,) = (await bus.info(s)).groups
        assert (group.last_delivered, group.lag) == (ids[189], 10)
    finally:
        await bus.delete(s)
        await bus.close()


async def test_shed_without_a_known_lag_counts_from_the_ids(redis_url: str, prefix: str) -> None:
    """An entry deleted after the group's position makes Redis's lag unknown: small entries are
    still named exactly as with it (the newest ``keep`` counted from the ids); large ones whose
    kept part the budget cannot reach are not shed at all, and nothing moves."""
    bus = open_bus(redis_url)
    s, big = prefix + "inbox", prefix + "big"
    try:
        ids = await _inbox(bus, s, 2000, read=256)
        client = bus.client  # type: ignore[attr-defined]
        await client.xdel(s, ids[1500])
        (group,) = await client.xinfo_groups(s)
        assert group["lag"] is None  # as Redis reports it (bus.info says at least 1)
        left = [i for i in ids[256:] if i != ids[1500]]
        shed = await _shed(bus, s, keep=768)
        assert (shed.count, shed.after, shed.first, shed.last) == (
            len(left) - 768,
            ids[255],
            left[0],
            left[len(left) - 769],
        )
        large = await _large_inbox(bus, big, 60, 64 << 10)
        await client.xdel(big, large[-1])
        before = await bus.info(big)
        assert isinstance(bus, Shedding)
        none = await bus.shed(
            big, "g", keep=40, limit=4096, claims=3, needle=NEEDLE, max_bytes=1 << 20,
            field="m", budget=1 << 20,
        )  # fmt: skip
        assert none.count == 0 and await bus.info(big) == before
    finally:
        await bus.delete(s, big)
        await bus.close()


@pytest.mark.redis
async def test_shed_within_keep_reads_no_entry_when_the_lag_is_known() -> None:
    """A backlog within ``keep`` whose lag Redis knows costs the call no walk (no XRANGE: a full
    batch's admission stays O(1) under a steady load); with the lag unknown it walks, and both
    shed nothing."""
    with redis_server(aof=False) as server:
        bus = open_bus(server.url)
        s = "shed:inbox"
        try:
            ids = await _inbox(bus, s, 1000, read=256)
            client = bus.client  # type: ignore[attr-defined]

            async def xranges() -> int:
                stats = await client.info("commandstats")
                return int(stats.get("cmdstat_xrange", {}).get("calls", 0))

            before = await xranges()
            assert (await _shed(bus, s, keep=744)).count == 0  # lag 744: within keep
            assert await xranges() == before
            await client.xdel(s, ids[-1])  # the lag becomes unknown: the ids are walked
            assert (await _shed(bus, s, keep=744)).count == 0
            assert await xranges() > before
        finally:
            await bus.close()
