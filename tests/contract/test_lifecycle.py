"""Lifecycle contract: close, trim safety, recordings, atomic commit, info, on every backend."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anyio
import pytest

from bus import (
    DEAD_FIELDS,
    Append,
    Bus,
    BusClosed,
    BusError,
    Consumer,
    Entry,
    EntrySource,
    Fence,
    Fenced,
    Handled,
    Recording,
    RecordingError,
    processed_key,
    record,
    safe_trim_id,
    set_watermark,
)
from bus.api import DEAD_MAX_FIELDS
from bus.testing import eventually

pytestmark = pytest.mark.anyio


def f(i: int) -> dict[str, bytes]:
    return {"n": str(i).encode(), "raw": bytes(range(i % 7, 256, 37))}


async def test_close_is_idempotent_and_final(bus: Bus, prefix: str) -> None:
    """After close every call raises BusClosed; closing twice is fine."""
    await bus.publish(prefix + "s", f(1))
    await bus.close()
    await bus.close()
    with pytest.raises(BusClosed):
        await bus.publish(prefix + "s", f(2))
    with pytest.raises(BusClosed):
        await bus.read(prefix + "s", "g", "c", block_ms=0)
    with pytest.raises(BusClosed):
        await bus.ping()


async def test_consumer_close_stops_a_blocked_loop(bus: Bus, prefix: str) -> None:
    """Consumer.close() ends batches() promptly even while it waits in a blocking read."""
    consumer = Consumer(bus, prefix + "s", "g", "c", block_ms=30_000, dead_stream=prefix + "d")
    ended = anyio.Event()

    async def run() -> None:
        async for _ in consumer.batches():
            pass
        ended.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)

            async def started() -> bool:
                return bool((await bus.info(prefix + "s")).groups)

            await eventually(started)
            await consumer.close()
            await ended.wait()
    assert await bus.ping()


async def test_trim_never_passes_pending_or_undelivered(bus: Bus, prefix: str) -> None:
    """Trim is clamped to the oldest pending / last delivered id of every group."""
    s = prefix + "s"
    await bus.ensure_group(s, "fast")
    await bus.ensure_group(s, "slow")
    ids = await bus.publish_many([Append(s, f(i)) for i in range(10)])
    fast = await bus.read(s, "fast", "c", block_ms=0)
    await bus.commit([Handled(e, "fast") for e in fast if e.id != ids[6]])
    slow = await bus.read(s, "slow", "c", count=4, block_ms=0)
    await bus.commit([Handled(e, "slow") for e in slow])
    assert await safe_trim_id(bus, s) == ids[3]  # slow's last delivered
    assert await bus.trim(s, min_id="9999999999999-0") == 3
    assert [e.id for e in await bus.range(s)] == ids[3:]
    rest = await bus.read(s, "slow", "c", block_ms=0)
    await bus.commit([Handled(e, "slow") for e in rest])
    assert await safe_trim_id(bus, s) == ids[6]  # fast's oldest pending
    await set_watermark(bus, s, ids[5])
    assert await bus.trim(s, min_id="9999999999999-0") == 2
    assert [e.id for e in await bus.range(s)] == ids[5:]


async def test_trim_without_groups_honours_min_id(bus: Bus, prefix: str) -> None:
    """With no group and no watermark, trim removes exactly the entries below min_id."""
    s = prefix + "s"
    ids = await bus.publish_many([Append(s, f(i)) for i in range(5)])
    assert await bus.trim(s, min_id=ids[2]) == 2
    assert [e.id for e in await bus.range(s)] == ids[2:]
    assert await bus.trim(prefix + "missing", min_id=ids[2]) == 0


async def test_recording_round_trip(bus: Bus, prefix: str, tmp_path: Path) -> None:
    """A recording yields exactly the entries (ids, binary fields) a live range yields."""
    a, b = prefix + "a", prefix + "b"
    await bus.publish_many([Append(a, f(i)) for i in range(1500)])
    await bus.publish_many([Append(b, {"x": b"\x00\xff"}), Append(b, {"y": b""})])
    path = tmp_path / "run.rec.gz"
    assert await record(bus, [a, b], path, {"run": "r1"}) == 1502
    rec = Recording.open(path)
    assert isinstance(rec, EntrySource) and isinstance(bus, EntrySource)
    assert rec.meta == {"run": "r1"} and rec.created_ns > 0
    assert await rec.streams() == sorted([a, b])
    assert await rec.streams(prefix + "b*") == [b]
    for s in (a, b):
        assert await rec.range(s) == await bus.range(s)
    live = await bus.range(a)
    for start, end, count in [(live[10].id, live[20].id, None), ("(" + live[10].id, "+", 5),
                              ("-", live[3].id, 2)]:  # fmt: skip
        assert await rec.range(a, start, end, count) == await bus.range(a, start, end, count)


def test_recording_rejects_foreign_files(tmp_path: Path) -> None:
    """Opening a non-recording, a wrong format or a future version fails with a clear error."""
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")
    with pytest.raises(RecordingError, match="gzip"):
        Recording.open(plain)
    for header, message in [({"format": "other", "version": 1}, "not a kasmina-recording"),
                            ({"format": "kasmina-recording", "version": 3}, "version 3")]:  # fmt: skip
        path = tmp_path / "x.gz"
        with gzip.open(path, "wt") as out:
            out.write(json.dumps(header) + "\n")
        with pytest.raises(RecordingError, match=message):
            Recording.open(path)
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wt") as out:
        out.write(json.dumps({"format": "kasmina-recording", "version": 1}) + "\n{oops\n")
    with pytest.raises(RecordingError, match=":2: bad entry"):
        Recording.open(path)


async def test_commit_is_all_or_nothing(bus: Bus, prefix: str) -> None:
    """A commit the server refuses leaves no effect, no dedupe mark and no ack behind."""
    s, out, blocker = prefix + "in", prefix + "out", prefix + "value"
    await bus.set_value(blocker, b"not a stream")
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    a, b = await bus.read(s, "g", "c", block_ms=0)
    bad = [
        Handled(a, "g", [Append(out, {"e": b"1"})], "k-a"),
        Handled(b, "g", [Append(out, {"e": b"2"}), Append(blocker, {"e": b"3"})], "k-b"),
    ]
    with pytest.raises(BusError):
        await bus.commit(bad)
    assert await bus.range(out) == []
    assert await bus.get_value(processed_key(s, "g", "k-a")) is None
    assert (await bus.info(s)).groups[0].pending == 2
    with pytest.raises(ValueError):
        await bus.commit([Handled(a, "g", [Append(out, {})])])
    assert await bus.commit(bad[:1]) == [True]


async def test_no_non_atomic_ack_path(bus: Bus) -> None:
    """The only ways to ack are the atomic commit and dead_letter: no separate ack/append."""
    for name in ("ack", "xack", "append", "acknowledge"):
        assert not hasattr(bus, name)


async def test_dead_letter_copies_and_acks(bus: Bus, prefix: str) -> None:
    """dead_letter copies origin, id, group, count, reason and fields, and acks the entry."""
    s, dead = prefix + "in", prefix + "dead"
    await bus.ensure_group(s, "g")
    await bus.publish(s, f(3))
    (e,) = await bus.read(s, "g", "c", block_ms=0)
    await bus.dead_letter(e, "g", dead_stream=dead, reason="bad_signature")
    (d,) = await bus.range(dead)
    assert d.fields == {**f(3), "dead.stream": s.encode(), "dead.id": e.id.encode(),
                        "dead.group": b"g", "dead.deliveries": b"1",
                        "dead.reason": b"bad_signature", "dead.fields": b"2"}  # fmt: skip
    assert (await bus.info(s)).groups[0].pending == 0


async def test_dead_letter_of_an_entry_with_thousands_of_fields(bus: Bus, prefix: str) -> None:
    """An entry of 5000 fields (anyone with write access can add one) is dead-lettered and
    acked: the copy keeps a bounded number of its fields and says how many it had."""
    s, dead = prefix + "in", prefix + "dead"
    await bus.ensure_group(s, "g")
    await bus.publish(s, {f"x{i}": b"v" for i in range(5000)})
    (e,) = await bus.read(s, "g", "c", block_ms=0)
    await bus.dead_letter(e, "g", dead_stream=dead, reason="bad_frame")
    (d,) = await bus.range(dead)
    assert d.fields["dead.fields"] == b"5000" and d.fields["dead.reason"] == b"bad_frame"
    assert len(d.fields) == DEAD_MAX_FIELDS + len(DEAD_FIELDS)
    assert (await bus.info(s)).groups[0].pending == 0


async def test_the_dead_letter_stream_is_capped(
    bus: Bus, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead-letter stream keeps about its cap, the newest copies (Redis trims whole nodes of
    at most 100 entries, so up to one node more), however many entries are dead-lettered."""
    cap = 100
    monkeypatch.setattr("bus.memory.DEAD_MAXLEN", cap)
    monkeypatch.setattr("bus.redis_writes.DEAD_MAXLEN", cap)
    s, dead = prefix + "in", prefix + "dead"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(7 * cap)])
    entries = await bus.read(s, "g", "c", count=7 * cap, block_ms=0)
    assert len(entries) == 7 * cap
    for e in entries:
        await bus.dead_letter(e, "g", dead_stream=dead, reason="bad_frame")
    copies = await bus.range(dead)
    assert cap <= len(copies) <= 2 * cap
    assert copies[-1].fields["dead.id"] == entries[-1].id.encode()
    assert (await bus.info(s)).groups[0].pending == 0


async def test_info_and_streams(bus: Bus, prefix: str) -> None:
    """info reports length, last id, consumers, pending, lag; streams lists only streams."""
    s = prefix + "s"
    assert (await bus.info(s)).length == 0 and (await bus.info(s)).groups == ()
    await bus.ensure_group(s, "g")
    ids = await bus.publish_many([Append(s, f(i)) for i in range(4)])
    await bus.read(s, "g", "c", count=1, block_ms=0)
    info = await bus.info(s)
    assert (info.name, info.length, info.last_id) == (s, 4, ids[-1])
    (g,) = info.groups
    assert (g.name, g.consumers, g.pending, g.lag, g.last_delivered) == ("g", 1, 1, 3, ids[0])
    await bus.publish(prefix + "t", f(0))
    await bus.set_value(prefix + "v", b"1")
    assert await bus.streams(prefix + "*") == [s, prefix + "t"]
    await bus.delete(s, prefix + "t")
    assert await bus.streams(prefix + "*") == []


async def test_entries_are_plain_values(bus: Bus, prefix: str) -> None:
    """Entries compare by value and carry str field names with bytes values."""
    e_id = await bus.publish(prefix + "s", {"k": b"v"})
    assert await bus.range(prefix + "s") == [Entry(prefix + "s", e_id, {"k": b"v"})]


async def test_fenced_commit_writes_only_for_the_lease_holder(bus: Bus, prefix: str) -> None:
    """A commit fenced on a lease writes and renews it while the token holds the key; for any
    other token (or an expired lease) it raises Fenced and writes, acks and renews nothing."""
    s, out, lease = prefix + "in", prefix + "out", prefix + "lease"
    await bus.ensure_group(s, "g")
    await bus.publish_many([Append(s, f(i)) for i in range(2)])
    a, b = await bus.read(s, "g", "c", block_ms=0)
    assert await bus.claim_key(lease, "owner-1", 60_000) is None
    eff = [Append(out, {"e": b"1"})]
    assert await bus.commit([Handled(a, "g", eff)], fence=Fence(lease, "owner-1", 90_000)) == [True]
    for token in ("owner-2", "owner-1"):
        if token == "owner-1":
            await bus.delete(lease)  # the lease expired: its holder is fenced off too
        with pytest.raises(Fenced):
            await bus.commit([Handled(b, "g", eff)], fence=Fence(lease, token, 90_000))
    assert len(await bus.range(out)) == 1
    info = await bus.info(s)
    assert info.groups[0].pending == 1 and info.groups[0].oldest_pending == b.id
    assert await bus.get_value(lease) is None


async def test_lease_renew_and_release_only_by_the_holder(bus: Bus, prefix: str) -> None:
    """renew_key and release_key act only for the value the key holds."""
    lease = prefix + "lease"
    assert await bus.claim_key(lease, "a", 60_000) is None
    assert await bus.claim_key(lease, "b", 60_000) == "a"
    assert not await bus.renew_key(lease, "b", 60_000)
    assert not await bus.release_key(lease, "b")
    assert await bus.renew_key(lease, "a", 60_000)
    assert await bus.release_key(lease, "a")
    assert await bus.get_value(lease) is None
    assert not await bus.renew_key(lease, "a", 60_000)
    assert await bus.claim_key(lease, "b", 60_000) is None


async def test_registry_members_are_a_sorted_set(bus: Bus, prefix: str) -> None:
    """register adds members once (idempotent); members lists them sorted; a missing key is empty."""
    reg = prefix + "registry"
    assert await bus.members(reg) == []
    await bus.register(reg, "b", "a")
    await bus.register(reg, "a")
    await bus.register(reg)
    assert await bus.members(reg) == ["a", "b"]
    await bus.delete(reg)
    assert await bus.members(reg) == []
