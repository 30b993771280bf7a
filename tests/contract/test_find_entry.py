"""``Bus.find_entry`` on every backend: whether an append whose reply was lost was written."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bus import Append, Bus
from contracts import streams

pytestmark = pytest.mark.anyio


async def test_find_entry_finds_the_first_match_at_or_after_start(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first entry from ``start`` on whose field holds the value, across several pages and
    script calls of the search; None for a value that is absent, only before ``start``, in
    another field, or in a missing stream."""
    from bus import redis_reads

    monkeypatch.setattr(redis_reads, "FIND_PAGES", 4)  # a call per 64 entries
    stream = f"kasmina:{{find-{uuid.uuid4().hex[:8]}}}:inbox:seed:s"
    try:
        ids = [await bus.publish(stream, {"m": b"early", "kind": b"k"})]
        filler = [Append(stream, {"m": f"f{i}".encode(), "kind": b"k"}) for i in range(450)]
        ids += await bus.publish_many(filler)
        ids += [await bus.publish(stream, {"m": b"\x00frame\xff", "kind": b"k"})]
        ids += [await bus.publish(stream, {"m": b"\x00frame\xff", "kind": b"k"})]
        assert await bus.find_entry(stream, "m", b"\x00frame\xff", "0-0") == ids[-2]
        assert await bus.find_entry(stream, "m", b"\x00frame\xff", ids[-1]) == ids[-1]
        assert await bus.find_entry(stream, "m", b"early", ids[1]) is None
        assert await bus.find_entry(stream, "m", b"early", "0-0") == ids[0]
        assert await bus.find_entry(stream, "kind", b"early", "0-0") is None
        assert await bus.find_entry(stream, "m", b"absent", "0-0") is None
        assert await bus.find_entry(stream + ":none", "m", b"early", "0-0") is None
    finally:
        await bus.delete(stream)


async def test_find_entry_leaves_every_other_stream_as_it_was(bus: Bus) -> None:
    """Looking in slot ``a``'s inbox leaves the inbox of a slot named ``a:found`` (slot names may
    hold a colon) a stream with its entry and group."""
    run = f"find-{uuid.uuid4().hex[:8]}"
    inbox = streams.inbox(run, "seed", "a")
    other = streams.inbox(run, "seed", "a:found")
    try:
        await bus.ensure_group(other, "actor:seed:a:found")
        kept = await bus.publish(other, {"m": b"kept"})
        await bus.publish(inbox, {"m": b"frame"})
        assert await bus.find_entry(inbox, "m", b"frame", "0-0") is not None
        assert [e.id for e in await bus.range(other)] == [kept]
        assert [g.name for g in (await bus.info(other)).groups] == ["actor:seed:a:found"]
    finally:
        await bus.delete(inbox, other)


@pytest.mark.parametrize("backend", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_search_through_huge_entries_takes_several_short_calls(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries far larger than a call's byte budget are read a page per call: the search still
    finds the frame behind them, over more than one script call."""
    from bus import open_bus, redis_reads
    from bus.redis_bus import RedisStreamBus
    from bus.testing import real_redis_url

    monkeypatch.setattr(redis_reads, "FIND_BYTES", 1 << 20)
    run = f"huge-{uuid.uuid4().hex[:8]}"
    bus = open_bus(real_redis_url() if backend == "redis" else f"fakeredis://{run}")
    assert isinstance(bus, RedisStreamBus)
    stream = streams.inbox(run, "seed", "s")
    calls = 0
    script = bus._find_entry

    async def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    monkeypatch.setattr(bus, "_find_entry", counted)
    try:
        for _ in range(40):
            await bus.publish(stream, {"m": b"x" * (256 << 10)})
        wanted = await bus.publish(stream, {"m": b"frame"})
        assert await bus.find_entry(stream, "m", b"frame", "0-0") == wanted
        assert calls >= 3  # 10 MiB of fields, 1 MiB (and a page) a call
    finally:
        await bus.delete(stream)
        await bus.close()
