"""A stream whose last id is the largest possible refuses every append (a Redis writer's
``XADD key 18446744073709551615-18446744073709551615``). A commit or a batch publish that has one
append to such a stream writes nothing at all: no effect elsewhere, no ack, no dedupe marker."""

from __future__ import annotations

import pytest

from bus import Append, Bus, BusError, Handled, open_bus
from bus.testing import purge_prefix

pytestmark = pytest.mark.anyio
MAX_ID = "18446744073709551615-18446744073709551615"


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest, redis_url: str, prefix: str) -> Bus:  # type: ignore[misc]
    """A bus of each Redis backend (the real one cleaned afterwards)."""
    url = redis_url if request.param == "redis" else f"fakeredis://{prefix}"
    opened = open_bus(url)
    yield opened
    if request.param == "redis":
        await purge_prefix(opened, prefix)
    await opened.close()


async def _exhaust(bus: Bus, stream: str) -> None:
    await bus.client.xadd(stream, {"x": b"y"}, id=MAX_ID)  # type: ignore[attr-defined]


async def test_a_commit_with_an_append_to_an_exhausted_stream_writes_nothing(
    bus: Bus, prefix: str
) -> None:
    """The order to one stream and the event to the exhausted one: neither is written, the input
    stays pending (another try may decide it), its dedupe marker stays unset."""
    inbox, orders, events, marker = (prefix + n for n in ("in", "orders", "events", "seen"))
    await bus.ensure_group(inbox, "g")
    await bus.publish(inbox, {"m": b"command"})
    (entry,) = await bus.read(inbox, "g", "c", count=10, block_ms=0)
    await _exhaust(bus, events)
    effects = [Append(orders, {"o": b"order"}), Append(events, {"e": b"event"})]
    with pytest.raises(BusError):
        await bus.commit([Handled(entry, "g", effects, marker)])
    assert await bus.range(orders) == []
    assert (await bus.info(inbox)).groups[0].pending == 1
    assert await bus.get_value(marker) is None
    assert await bus.commit([Handled(entry, "g", effects[:1], marker)]) == [True]  # still fresh
    assert len(await bus.range(orders)) == 1


async def test_a_batch_publish_with_an_append_to_an_exhausted_stream_writes_nothing(
    bus: Bus, prefix: str
) -> None:
    """publish_many is all or nothing too: the appends before the refused one are taken back."""
    good, bad = prefix + "good", prefix + "bad"
    await _exhaust(bus, bad)
    with pytest.raises(BusError):
        await bus.publish_many([Append(good, {"a": b"1"}), Append(good, {"a": b"2"}),
                                Append(bad, {"b": b"3"})])  # fmt: skip
    assert await bus.range(good) == []


async def test_duplicates_within_one_commit_take_effect_once(bus: Bus, prefix: str) -> None:
    """Two items for one entry, or two entries with one dedupe marker: the first is fresh, the
    second a duplicate (its effects not written), as when the ack decided it."""
    inbox, out = prefix + "in", prefix + "out"
    await bus.ensure_group(inbox, "g")
    for m in (b"a", b"b", b"c"):
        await bus.publish(inbox, {"m": m})
    first, second, third = await bus.read(inbox, "g", "c", count=10, block_ms=0)
    same_entry = [Handled(first, "g", [Append(out, {"n": b"1"})]),
                  Handled(first, "g", [Append(out, {"n": b"2"})])]  # fmt: skip
    assert await bus.commit(same_entry) == [True, False]
    same_marker = [Handled(second, "g", [Append(out, {"n": b"3"})], prefix + "k"),
                   Handled(third, "g", [Append(out, {"n": b"4"})], prefix + "k")]  # fmt: skip
    assert await bus.commit(same_marker) == [True, False]
    assert [e.fields["n"] for e in await bus.range(out)] == [b"1", b"3"]
    assert (await bus.info(inbox)).groups[0].pending == 0  # every entry acked


async def test_reading_after_the_largest_id_finds_nothing(bus: Bus, prefix: str) -> None:
    """A reader whose cursor is the largest id (a writer's entry) reads nothing after it, where
    Redis would answer XRANGE with an error."""
    stream = prefix + "outcomes"
    await _exhaust(bus, stream)
    assert await bus.range(stream, f"({MAX_ID}") == []
