"""Commit contract for large and mixed batches: binary-safe fields, many acks, several groups."""

from __future__ import annotations

import pytest

from bus import Append, Bus, BusError, Handled, processed_key

pytestmark = pytest.mark.anyio

ODD = {"m": b"", "x:y;1,2": b"3:;,\x00\xff" * 40, "\u00e9": bytes(range(256))}


async def test_commit_fields_are_binary_safe(bus: Bus, prefix: str) -> None:
    """Appended fields keep exact bytes (separators, NULs, empty values, non-ASCII names)."""
    s, out, capped = prefix + "in", prefix + "out", prefix + "capped"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, {"n": b"%d" % i}) for i in range(2)])
    a, b = await bus.read(s, "g", "c", block_ms=0)
    handled = [
        Handled(a, "g", [Append(out, ODD), Append(capped, {"t": b"1"}, maxlen=10)], "k-a"),
        Handled(b, "g", [Append(out, {"only": b"one"})]),
    ]
    assert await bus.commit(handled) == [True, True]
    assert [e.fields for e in await bus.range(out)] == [ODD, {"only": b"one"}]
    assert [e.fields for e in await bus.range(capped)] == [{"t": b"1"}]
    assert (await bus.info(s)).groups[0].pending == 0


async def test_commit_many_items_groups_and_duplicates(bus: Bus, prefix: str) -> None:
    """One commit of >1000 items over two streams and groups acks all, dedupes per item."""
    s1, s2, out = prefix + "a", prefix + "b", prefix + "out"
    for s in (s1, s2):
        await bus.ensure_group(s, "g1")
        await bus.ensure_group(s, "g2")
    await bus.publish_many([Append(s, {"n": b"%d" % i}) for i in range(700) for s in (s1, s2)])
    handled: list[Handled] = []
    for s in (s1, s2):
        for group in ("g1", "g2"):
            for e in await bus.read(s, group, "c", count=1000, block_ms=0):
                key = e.fields["n"].decode()
                handled.append(Handled(e, group, [Append(out, {"k": e.fields["n"]})], key))
    await bus.set_value(processed_key(s1, "g1", "5"), b"1")  # already done
    results = await bus.commit(handled)
    assert len(results) == 2800 and results.count(False) == 1
    assert not results[5] and handled[5].dedupe_key == "5"
    assert len(await bus.range(out)) == 2799
    for s in (s1, s2):
        assert [g.pending for g in (await bus.info(s)).groups] == [0, 0]
    assert await bus.commit(handled[:3]) == [False, False, False]


async def test_publish_many_mixed_shapes_keep_order_and_fields(bus: Bus, prefix: str) -> None:
    """A batch alternating streams, caps and field names writes every entry, in order, exactly."""
    a, b = prefix + "a", prefix + "b"
    batch = [
        Append(a, {"f": b"1"}),
        Append(a, {"f": b"2"}),
        Append(a, {"g": b"3"}),
        Append(a, {"f": b"4", "g": b""}),
        Append(a, {"g": b"5", "f": b"6"}),
        Append(b, {"f": b"7"}),
        Append(b, {"f": b"8"}, maxlen=100),
        Append(b, {"f": b"9"}, maxlen=100),
        Append(a, {"f": b"10"}),
        Append(a, ODD),
        Append(a, ODD),
    ]
    ids = await bus.publish_many(batch)
    assert len(ids) == len(batch) == len({(x.stream, i) for i, x in zip(ids, batch, strict=True)})
    for stream in (a, b):
        got = await bus.range(stream)
        sent = [(i, x.fields) for i, x in zip(ids, batch, strict=True) if x.stream == stream]
        assert [(e.id, e.fields) for e in got] == sent
        assert [list(e.fields) for e in got] == [list(f) for _, f in sent]  # field order too


async def test_publish_many_refuses_a_bad_append_anywhere_writing_nothing(
    bus: Bus, prefix: str
) -> None:
    """An empty append or a key that is no stream, even last in a batch, writes nothing at all."""
    a, taken = prefix + "a", prefix + "taken"
    await bus.set_value(taken, b"x")
    good = [Append(a, {"f": b"%d" % i}) for i in range(5)]
    with pytest.raises(ValueError, match="at least one field"):
        await bus.publish_many([*good, Append(a, {})])
    with pytest.raises(BusError, match="WRONGTYPE"):
        await bus.publish_many([*good, Append(taken, {"f": b"1"})])
    assert await bus.range(a) == []
    assert await bus.get_value(taken) == b"x"


async def test_commit_of_plain_acks_between_effects_reports_each_item(
    bus: Bus, prefix: str
) -> None:
    """Acks without effects, mixed with effects, streams and groups, report each item in order."""
    s1, s2, out = prefix + "a", prefix + "b", prefix + "out"
    for s in (s1, s2):
        await bus.ensure_group(s, "g1")
        await bus.ensure_group(s, "g2")
        await bus.publish_many([Append(s, {"n": b"%d" % i}) for i in range(6)])
    a = await bus.read(s1, "g1", "c", block_ms=0)
    b = await bus.read(s2, "g1", "c", block_ms=0)
    a2 = await bus.read(s1, "g2", "c", block_ms=0)
    assert await bus.commit([Handled(a[2], "g1"), Handled(b[0], "g1")]) == [True, True]
    handled = [
        Handled(a[0], "g1"),
        Handled(a[1], "g1"),
        Handled(a[2], "g1"),  # acked above: a duplicate in the middle of a run
        Handled(a[3], "g1"),
        Handled(a[4], "g1", [Append(out, {"k": b"4"})]),
        Handled(a[5], "g1"),
        Handled(b[0], "g1"),  # acked above
        Handled(b[1], "g1"),
        Handled(a2[0], "g2"),
        Handled(a2[1], "g2", dedupe_key="x"),
        Handled(a2[2], "g2"),
        Handled(a[0], "g1"),  # earlier in this very commit
    ]
    expected = [True, True, False, True, True, True, False, True, True, True, True, False]
    assert await bus.commit(handled) == expected
    assert [e.fields for e in await bus.range(out)] == [{"k": b"4"}]
    pending = {(s, g.name): g.pending for s in (s1, s2) for g in (await bus.info(s)).groups}
    assert pending == {(s1, "g1"): 0, (s1, "g2"): 3, (s2, "g1"): 4, (s2, "g2"): 0}
