"""Delivery contract: every backend orders, acks, redelivers, reclaims, dead-letters, dedupes."""

from __future__ import annotations

import anyio
import pytest

from bus import Append, Bus, Consumer, Entry, Handled, contiguous, processed_key
from bus.testing import backdate, drop_payload, eventually

pytestmark = pytest.mark.anyio


def f(i: int) -> dict[str, bytes]:
    return {"n": str(i).encode(), "blob": bytes([i % 256, 0, 255])}


async def test_order_within_a_stream(bus: Bus, prefix: str) -> None:
    """Entries come out of read and range in publish order with increasing ids."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    ids = [await bus.publish(s, f(i)) for i in range(20)]
    ids += await bus.publish_many([Append(s, f(i)) for i in range(20, 30)])
    got = await bus.read(s, "g", "c", count=100, block_ms=0)
    assert [e.id for e in got] == ids
    assert [e.fields for e in got] == [f(i) for i in range(30)]
    assert all(e.deliveries == 1 and e.stream == s for e in got)
    assert [e.id for e in await bus.range(s)] == ids


async def test_commit_acks(bus: Bus, prefix: str) -> None:
    """A committed entry leaves the pending list; an uncommitted one stays pending."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(3)])
    a, b, c = await bus.read(s, "g", "c", block_ms=0)
    assert await bus.commit([Handled(a, "g"), Handled(c, "g")]) == [True, True]
    info = await bus.info(s)
    assert info.groups[0].pending == 1 and info.groups[0].oldest_pending == b.id
    assert [e.id for e in await bus.read(s, "g", "c", pending_first=True)] == [b.id]


async def test_redelivery_to_a_restarted_consumer(bus: Bus, prefix: str) -> None:
    """A consumer that died before acking finds its entries again in its own PEL (count 2)."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(5)])
    first = await bus.read(s, "g", "worker-1", block_ms=0)
    assert await bus.read(s, "g", "worker-1", block_ms=0) == []
    again = await bus.read(s, "g", "worker-1", pending_first=True)
    assert [e.id for e in again] == [e.id for e in first]
    assert [e.deliveries for e in again] == [2] * 5
    paged = await bus.read(s, "g", "worker-1", pending_first=True, pending_after=first[2].id)
    assert [e.id for e in paged] == [e.id for e in first[3:]]
    assert await bus.read(s, "g", "worker-2", pending_first=True) == []


async def test_reclaim_after_lease(bus: Bus, prefix: str) -> None:
    """Entries idle past the lease move to the claiming consumer with their count bumped."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(3)])
    got = await bus.read(s, "g", "dead", block_ms=0)
    assert await bus.claim_stale(s, "g", "alive", min_idle_ms=60_000) == []
    for e in got[:2]:
        await backdate(bus, s, "g", "dead", e.id, 120_000)
    claimed = await bus.claim_stale(s, "g", "alive", min_idle_ms=60_000)
    assert [(e.id, e.fields, e.deliveries) for e in claimed] == [
        (e.id, e.fields, 2) for e in got[:2]
    ]
    assert [e.id for e in await bus.read(s, "g", "alive", pending_first=True)] == [
        e.id for e in got[:2]
    ]


async def test_stale_owner_commit_after_reclaim_writes_nothing(bus: Bus, prefix: str) -> None:
    """A rival that reclaimed and committed an entry wins; the old owner's late commit (no
    dedupe key) writes nothing and reports a duplicate; the reverse order holds too."""
    s, out = prefix + "in", prefix + "out"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    first, second = await bus.read(s, "g", "slow", block_ms=0)
    for e in (first, second):
        await backdate(bus, s, "g", "slow", e.id, 120_000)
    claimed = await bus.claim_stale(s, "g", "rival", min_idle_ms=60_000)
    assert [e.id for e in claimed] == [first.id, second.id]
    eff = [Append(out, {"e": b"rival"})]
    assert await bus.commit([Handled(claimed[0], "g", eff)]) == [True]  # rival first
    assert await bus.commit([Handled(first, "g", [Append(out, {"e": b"slow"})])]) == [False]
    assert await bus.commit([Handled(second, "g", [Append(out, {"e": b"slow"})])]) == [True]
    assert await bus.commit([Handled(claimed[1], "g", eff)]) == [False]  # old owner first
    assert [x.fields["e"] for x in await bus.range(out)] == [b"rival", b"slow"]
    assert (await bus.info(s)).groups[0].pending == 0


async def test_commit_resent_after_a_lost_reply_writes_nothing(bus: Bus, prefix: str) -> None:
    """Resending a whole commit (as after a lost reply) acks nothing new and writes nothing."""
    s, out = prefix + "in", prefix + "out"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(3)])
    handled = [Handled(e, "g", [Append(out, f(i))]) for i, e in
               enumerate(await bus.read(s, "g", "c", block_ms=0))]  # fmt: skip
    assert await bus.commit(handled) == [True] * 3
    assert await bus.commit(handled) == [False] * 3
    assert [x.fields for x in await bus.range(out)] == [f(i) for i in range(3)]


async def test_claim_of_trimmed_entry_yields_empty_fields(bus: Bus, prefix: str) -> None:
    """A stale pending id whose payload is gone comes back with empty fields (for the DLQ)."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    a, b = await bus.read(s, "g", "dead", block_ms=0)
    await drop_payload(bus, s, a.id)
    again = await bus.read(s, "g", "dead", pending_first=True)
    assert [(e.id, e.fields) for e in again] == [(a.id, {}), (b.id, b.fields)]
    claimed = {e.id: e.fields for e in await bus.claim_stale(s, "g", "x", min_idle_ms=0)}
    assert claimed == {a.id: {}, b.id: b.fields}


async def test_dead_letter_after_max_deliveries_without_blocking(bus: Bus, prefix: str) -> None:
    """A poison entry goes to the dead stream after N deliveries; later entries keep flowing."""
    s, dead = prefix + "in", prefix + "dead"
    consumer = Consumer(bus, s, "g", "c", block_ms=20, lease_ms=60_000, max_deliveries=3,
                        dead_stream=dead, claim_every_s=0.0)  # fmt: skip
    await bus.ensure_group(s, "g")
    await bus.publish(s, {"poison": b"1"})
    await bus.publish(s, f(1))
    handled: list[bytes] = []

    async def publish_after_dead_letter() -> None:
        async def dead_lettered() -> bool:
            return (await bus.info(dead)).length == 1

        await eventually(dead_lettered)
        await bus.publish(s, f(2))

    async def consume() -> None:
        async for batch in consumer.batches():
            for e in batch:
                if "poison" in e.fields:
                    await backdate(bus, s, "g", "c", e.id, 120_000)
                else:
                    handled.append(e.fields["n"])
                    await bus.commit([Handled(e, "g")])
            if len(handled) == 2:
                await consumer.close()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_after_dead_letter)
            tg.start_soon(consume)
    assert handled == [b"1", b"2"]
    (d,) = await bus.range(dead)
    assert d.fields["poison"] == b"1" and d.fields["dead.reason"] == b"max_deliveries"
    assert d.fields["dead.deliveries"] == b"4" and d.fields["dead.group"] == b"g"
    assert d.fields["dead.stream"] == s.encode()
    assert (await bus.info(s)).groups[0].pending == 0
    assert consumer.dead_lettered == 1


async def test_consumer_dead_letters_trimmed_payload(
    bus: Bus, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pending entry whose payload was trimmed is dead-lettered as payload_trimmed, and the
    operator is told on one log line (entry, streams, reason, count)."""
    s, dead = prefix + "in", prefix + "dead"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    a, b = await bus.read(s, "g", "c", block_ms=0)
    await drop_payload(bus, s, a.id)
    consumer = Consumer(bus, s, "g", "c", block_ms=20, dead_stream=dead)
    with anyio.fail_after(10):
        async for batch in consumer.batches():
            assert [e.id for e in batch] == [b.id]
            break
    (d,) = await bus.range(dead)
    assert d.fields["dead.reason"] == b"payload_trimmed" and d.fields["dead.id"] == a.id.encode()
    said = [r.getMessage() for r in caplog.records if r.name == "kasmina.bus"]
    assert said == [
        f"g: entry {a.id} of {s} moved to {dead} (payload_trimmed); 1 dead-lettered so far"
    ]


async def test_dedupe_commit_twice_effects_once(bus: Bus, prefix: str) -> None:
    """Committing the same dedupe key twice writes the effects once; both commits ack."""
    s, out = prefix + "in", prefix + "out"
    await bus.ensure_group(s, "g")
    await bus.publish(s, f(1))
    (e,) = await bus.read(s, "g", "c", block_ms=0)
    h = Handled(e, "g", appends=[Append(out, {"effect": b"x"}), Append(out, {"effect": b"y"})],
                dedupe_key="msg-1")  # fmt: skip
    assert await bus.commit([h]) == [True]
    assert await bus.commit([h]) == [False]
    dup = Entry(s, await bus.publish(s, f(1)), f(1))
    await bus.read(s, "g", "c", block_ms=0)
    assert await bus.commit([Handled(dup, "g", h.appends, "msg-1")]) == [False]
    assert [x.fields["effect"] for x in await bus.range(out)] == [b"x", b"y"]
    assert (await bus.info(s)).groups[0].pending == 0
    assert await bus.get_value(processed_key(s, "g", "msg-1")) is not None


async def test_commit_markers_are_read_together_in_order(bus: Bus, prefix: str) -> None:
    """get_values answers each key in the order asked: the committed message's marker, None for
    a key never written, and an empty list for no keys."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish(s, f(1))
    (e,) = await bus.read(s, "g", "c", block_ms=0)
    assert await bus.commit([Handled(e, "g", dedupe_key="m-1")]) == [True]
    await bus.set_value(prefix + "plain", b"v")
    keys = [processed_key(s, "g", "m-0"), processed_key(s, "g", "m-1"), prefix + "plain"]
    values = await bus.get_values(keys)
    assert values[0] is None and values[1] == await bus.get_value(keys[1]) and values[2] == b"v"
    assert values[1] is not None
    assert await bus.get_values([]) == []


async def test_dedupe_within_one_batch(bus: Bus, prefix: str) -> None:
    """Two items of one commit with the same dedupe key: the second is a duplicate."""
    s, out = prefix + "in", prefix + "out"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    a, b = await bus.read(s, "g", "c", block_ms=0)
    eff = [Append(out, {"e": b"1"})]
    assert await bus.commit([Handled(a, "g", eff, "k"), Handled(b, "g", eff, "k")]) == [
        True, False,
    ]  # fmt: skip
    assert len(await bus.range(out)) == 1


async def test_marker_only_items_are_fresh_once_per_entry_and_marker(bus: Bus, prefix: str) -> None:
    """Items with a dedupe key and no appends (a step report whose event another item carries):
    fresh only while pending and unmarked, once per entry and per marker within a commit, even
    beside an item with appends under the same marker; every one is acked."""
    s, out = prefix + "in", prefix + "out"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(6)])
    a, b, c, d, e, g = await bus.read(s, "g", "c", block_ms=0)
    eff = [Append(out, {"e": b"1"})]
    marks = [Handled(a, "g", (), "m1"), Handled(b, "g", (), "m1"), Handled(a, "g", (), "m2")]
    marks += [Handled(c, "g", eff, "m3"), Handled(d, "g", (), "m3"), Handled(e, "g", (), "m4")]
    assert await bus.commit(marks) == [True, False, False, True, False, True]
    assert await bus.commit([Handled(e, "g", (), "m5")]) == [False]  # no longer pending
    assert await bus.commit([Handled(g, "g", (), "m4")]) == [False]  # marked before
    assert len(await bus.range(out)) == 1
    assert (await bus.info(s)).groups[0].pending == 0
    markers = await bus.get_values([processed_key(s, "g", f"m{i}") for i in range(1, 6)])
    assert [m is not None for m in markers] == [True, False, True, True, False]


async def test_a_marker_only_item_after_a_plain_ack_of_its_entry_is_fresh(
    bus: Bus, prefix: str
) -> None:
    """An entry pending when the commit begins is fresh for its marker item even when a plain ack
    item before it in the same commit acks it first (as with appends: the look-ups see the
    group as the commit found it)."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish(s, f(1))
    (e,) = await bus.read(s, "g", "c", block_ms=0)
    assert await bus.commit([Handled(e, "g"), Handled(e, "g", (), "m1")]) == [True, True]
    assert await bus.get_value(processed_key(s, "g", "m1")) is not None


async def test_group_isolation(bus: Bus, prefix: str) -> None:
    """Each group gets every entry; acks and dedupe marks of one group don't touch another."""
    s, out = prefix + "in", prefix + "out"
    for g in ("g1", "g2"):
        await bus.ensure_group(s, g)
    await bus.ensure_group(s, "g1")  # idempotent
    await bus.publish_many([Append(s, f(i)) for i in range(3)])
    r1 = await bus.read(s, "g1", "c", block_ms=0)
    r2 = await bus.read(s, "g2", "c", block_ms=0)
    assert [e.id for e in r1] == [e.id for e in r2]
    eff = [Append(out, {"e": b"1"})]
    assert await bus.commit([Handled(r1[0], "g1", eff, "k")]) == [True]
    assert await bus.commit([Handled(r2[0], "g2", eff, "k")]) == [True]
    groups = {g.name: g for g in (await bus.info(s)).groups}
    assert groups["g1"].pending == 2 and groups["g2"].pending == 2
    assert len(await bus.range(out)) == 2


async def test_blocking_read_waits_then_returns_empty(bus: Bus, prefix: str) -> None:
    """A read on an empty stream blocks about block_ms, then returns [] (no instant return)."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    t0 = anyio.current_time()
    assert await bus.read(s, "g", "c", block_ms=300) == []
    assert 0.25 <= anyio.current_time() - t0 < 3


async def test_blocking_read_wakes_on_publish(bus: Bus, prefix: str) -> None:
    """A blocked read returns the entry another task publishes meanwhile, before its timeout."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    got: list[Entry] = []

    async def reader() -> None:
        got.extend(await bus.read(s, "g", "c", block_ms=5000))

    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.2)  # let the reader block first: this is the scenario under test
        entry_id = await bus.publish(s, f(1))
    assert [e.id for e in got] == [entry_id]
    assert anyio.current_time() - t0 < 2


async def test_read_returns_available_entries_at_once(bus: Bus, prefix: str) -> None:
    """With entries already there a blocking read returns them without waiting."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    t0 = anyio.current_time()
    assert len(await bus.read(s, "g", "c", block_ms=3000)) == 2
    assert anyio.current_time() - t0 < 1
    assert (await bus.info(s)).groups[0].pending == 2


async def test_read_heals_deleted_stream(bus: Bus, prefix: str) -> None:
    """Reading a deleted stream recreates it and its group; later publishes are delivered."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    await bus.delete(s)
    assert await bus.read(s, "g", "c", block_ms=0) == []
    assert [g.name for g in (await bus.info(s)).groups] == ["g"]
    entry_id = await bus.publish(s, f(1))
    assert [e.id for e in await bus.read(s, "g", "c", block_ms=0)] == [entry_id]


async def test_claim_key_set_once(bus: Bus, prefix: str) -> None:
    """claim_key sets a key once and reports the holder's value afterwards."""
    k = prefix + "nonce:1"
    assert await bus.claim_key(k, "a", 60_000) is None
    assert await bus.claim_key(k, "b", 60_000) == "a"


async def test_only_a_batch_of_new_entries_is_marked_contiguous(bus: Bus, prefix: str) -> None:
    """A re-read of the consumer's pending entries (acked ones between them) is not marked
    contiguous; the next read of new entries is, and holds them in stream order."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    ids = await bus.publish_many([Append(s, f(i)) for i in range(8)])
    first = await bus.read(s, "g", "c", count=4, block_ms=0)
    await bus.commit([Handled(first[1], "g"), Handled(first[2], "g")])
    consumer = Consumer(bus, s, "g", "c", batch=4, block_ms=20, dead_stream=prefix + "dead")
    seen: list[tuple[list[str], bool]] = []
    with anyio.fail_after(10):
        async for batch in consumer.batches():
            seen.append(([e.id for e in batch], contiguous(batch)))
            if len(seen) == 2:
                break
    assert seen == [([ids[0], ids[3]], False), (ids[4:], True)]


async def test_a_woken_consumer_reads_at_once_what_its_blocked_read_would_not_see(
    bus: Bus, prefix: str
) -> None:
    """A group moved past the stream's end holds back an entry added meanwhile; moved back, the
    entry is readable, but a read blocked since would see it only when its time ran out. wake()
    cuts that read short: the entry comes out long before the block would have ended."""
    s = prefix + "in"
    await bus.ensure_group(s, "g")
    if hasattr(bus, "max_block_ms"):
        bus.max_block_ms = 8_000  # under the socket timeout (10 s), far over the deadline below
    consumer = Consumer(bus, s, "g", "c", block_ms=8_000, dead_stream=prefix + "dead",
                        claim_every_s=600.0)  # fmt: skip
    got: list[str] = []

    async def consume() -> None:
        async for batch in consumer.batches():
            got.extend(e.id for e in batch)
            return

    with anyio.fail_after(4):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)

            async def blocked() -> bool:
                return consumer.reading

            await eventually(blocked)
            await bus.set_group_id(s, "g", "18446744073709551615-0")
            entry = await bus.publish(s, f(1))
            await bus.set_group_id(s, "g", "0-0")
            consumer.wake()
    await consumer.close()
    assert got == [entry]
