"""Commit contract for large and mixed batches: binary-safe fields, many acks, several groups."""

from __future__ import annotations

import pytest

from bus import Append, Bus, Handled, processed_key

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
