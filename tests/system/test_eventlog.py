"""The log reader: a stream read back in full, in order, page by page, between the ids asked for,
with every entry that does not verify reported in its place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from actors.eventlog import BadEntry, LogRecord, read_log, read_verified
from actors.hosting import FRAME
from bus import Append, Bus, Entry
from contracts import KeyRing, Reason, Signer, Verifier, kinds, streams
from leyline import pb

pytestmark = pytest.mark.anyio


@dataclass
class Recording:
    """An entry source that records the ``(start, end, count)`` of every range call."""

    bus: Bus
    calls: list[tuple[str, str, int | None]] = field(default_factory=list)

    async def streams(self, pattern: str) -> list[str]:
        return await self.bus.streams(pattern)

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[Entry]:
        self.calls.append((start, end, count))
        return await self.bus.range(stream, start, end, count)


async def _beats(bus: Bus, stream: str, ring: KeyRing, n: int) -> list[str]:
    """Append ``n`` signed heartbeats (``processed`` = 0, 1, ...); their entry ids, in order."""
    signer = Signer(ring, "tests")
    appends = []
    for i in range(n):
        frame = signer.seal(kinds.HEARTBEAT, pb.Heartbeat(actor="a", processed=i), stream=stream)
        appends.append(Append(stream, {FRAME: frame, "kind": kinds.HEARTBEAT.encode()}))
    return await bus.publish_many(appends)


async def _read(source: object, stream: str, ring: KeyRing, **kw: object) -> list[tuple[str, int]]:
    """``(entry id, processed)`` of every record read_log yields (all must verify)."""
    out = []
    async for record in read_log(source, stream, Verifier(ring, replay=True), **kw):  # type: ignore[arg-type]
        assert isinstance(record, LogRecord), record
        out.append((record.entry_id, record.message.processed))  # type: ignore[attr-defined]
    return out


async def test_a_log_longer_than_a_page_is_read_in_full_and_in_order(bus: Bus, run_id: str) -> None:
    """Ten entries read three at a time come back all ten, once each, in append order, and every
    range call asks for at most three."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    ids = await _beats(bus, stream, ring, 10)
    source = Recording(bus)
    assert await _read(source, stream, ring, page=3) == list(zip(ids, range(10), strict=True))
    assert [count for _, _, count in source.calls] == [3, 3, 3, 3]
    assert [start for start, _, _ in source.calls] == [
        "-",
        f"({ids[2]}",
        f"({ids[5]}",
        f"({ids[8]}",
    ]


async def test_a_log_of_whole_pages_is_read_once(bus: Bus, run_id: str) -> None:
    """Six entries read three at a time: six records, none twice, and one last call that finds
    nothing after the sixth."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    ids = await _beats(bus, stream, ring, 6)
    source = Recording(bus)
    assert await _read(source, stream, ring, page=3) == list(zip(ids, range(6), strict=True))
    assert [start for start, _, _ in source.calls] == ["-", f"({ids[2]}", f"({ids[5]}"]


async def test_start_and_until_bound_the_read(bus: Bus, run_id: str) -> None:
    """``start`` and ``until`` are inclusive ids, ``(id`` starts after one; paging does not move
    either bound."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    ids = await _beats(bus, stream, ring, 8)
    got = await _read(bus, stream, ring, start=ids[2], until=ids[6], page=2)
    assert got == [(ids[i], i) for i in range(2, 7)]
    got = await _read(bus, stream, ring, start=f"({ids[2]}", page=2)
    assert got == [(ids[i], i) for i in range(3, 8)]
    assert await _read(bus, stream, ring, until=ids[1]) == [(ids[0], 0), (ids[1], 1)]


async def test_the_default_page_is_two_thousand_entries(bus: Bus, run_id: str) -> None:
    """A recorded log of 2,001 entries is read whole by read_verified in two range calls: 2,000
    entries, then the one after them."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    ids = await _beats(bus, stream, ring, 2001)
    source = Recording(bus)
    good, bad = await read_verified(source, stream, ring)
    assert bad == []
    assert [(e, k, m.processed) for e, k, m in good] == [
        (ids[i], kinds.HEARTBEAT, i) for i in range(2001)
    ]
    assert source.calls == [("-", "+", 2000), (f"({ids[1999]}", "+", 2000)]


async def test_read_verified_stops_at_until(bus: Bus, run_id: str) -> None:
    """read_verified with ``until`` returns the events up to that id and no later one; without it,
    every event."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    ids = await _beats(bus, stream, ring, 4)
    good, _ = await read_verified(bus, stream, ring, until=ids[1])
    assert [e for e, _, _ in good] == ids[:2]
    good, _ = await read_verified(bus, stream, ring, until=None)
    assert [e for e, _, _ in good] == ids


async def test_bad_entries_are_reported_in_their_place(bus: Bus, run_id: str) -> None:
    """An entry with no frame and one signed with another key are reported where they stand, with
    their reason codes, between the records that verify; read_verified gives the same split."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    (first,) = await _beats(bus, stream, ring, 1)
    bare = await bus.publish(stream, {"kind": kinds.HEARTBEAT.encode()})
    foreign = Signer(KeyRing.generate(), "tests").seal(
        kinds.HEARTBEAT, pb.Heartbeat(actor="x"), stream=stream
    )
    forged = await bus.publish(stream, {FRAME: foreign})
    (last,) = await _beats(bus, stream, ring, 1)
    records = [r async for r in read_log(bus, stream, Verifier(ring, replay=True), page=2)]
    assert [r.entry_id for r in records] == [first, bare, forged, last]
    assert [type(r) for r in records] == [LogRecord, BadEntry, BadEntry, LogRecord]
    assert records[1] == BadEntry(bare, stream, Reason.BAD_FRAME, "no frame field")
    assert isinstance(records[2], BadEntry) and records[2].reason is Reason.UNKNOWN_KEY
    assert all(r.stream == stream for r in records)
    good, bad = await read_verified(bus, stream, ring)
    assert [e for e, _, _ in good] == [first, last]
    assert [(b["entry_id"], b["stream"], b["reason"]) for b in bad] == [
        (bare, stream, "bad_frame"),
        (forged, stream, "unknown_key"),
    ]
    assert bad[0]["detail"] == "no frame field"


async def test_a_record_carries_its_envelope_and_event(bus: Bus, run_id: str) -> None:
    """A record names its kind, carries the verified envelope, and its event is ``(entry id,
    kind, message)``."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    (entry,) = await _beats(bus, stream, ring, 1)
    (record,) = [r async for r in read_log(bus, stream, Verifier(ring, replay=True))]
    assert isinstance(record, LogRecord)
    assert record.kind == kinds.HEARTBEAT and record.envelope.kind == kinds.HEARTBEAT
    assert record.envelope.sender == "tests"
    assert record.event == (entry, kinds.HEARTBEAT, pb.Heartbeat(actor="a", processed=0))


async def test_a_recorded_log_is_read_whatever_the_age_of_its_entries(
    bus: Bus, run_id: str
) -> None:
    """read_verified reads a recording: an entry signed a day ago verifies (its MAC is checked,
    its age is not), where a live verifier refuses it as stale."""
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    day_ago = time.time_ns() - 86_400 * 10**9
    frame = Signer(ring, "tests").seal(
        kinds.HEARTBEAT, pb.Heartbeat(actor="old"), stream=stream, ts_ns=day_ago
    )
    entry = await bus.publish(stream, {FRAME: frame})
    good, bad = await read_verified(bus, stream, ring)
    assert (good, bad) == ([(entry, kinds.HEARTBEAT, pb.Heartbeat(actor="old"))], [])
    (live,) = [r async for r in read_log(bus, stream, Verifier(ring))]
    assert isinstance(live, BadEntry) and live.reason is Reason.STALE


async def test_read_verified_tells_its_progress_every_so_many_entries(
    bus: Bus, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on_read`` hears the count of entries read (verified or not) every ``PROGRESS_EVERY``:
    what `kasmina replay` turns into progress lines on a long log."""
    import actors.eventlog as eventlog

    monkeypatch.setattr(eventlog, "PROGRESS_EVERY", 3)
    ring, stream = KeyRing.generate(), streams.heartbeats(run_id)
    await _beats(bus, stream, ring, 7)
    await bus.publish(stream, {FRAME: b"not a frame"})  # the 8th: counted, not verified
    heard: list[int] = []
    good, bad = await read_verified(bus, stream, ring, on_read=heard.append)
    assert (len(good), len(bad), heard) == (7, 1, [3, 6])


def test_replay_progress_speaks_only_on_a_long_read(capsys: pytest.CaptureFixture[str]) -> None:
    """The replay's progress says nothing on a read shorter than its delay; past it, a line per
    report with the count, and a last line with the total."""
    from kasmina.commands.replay import _Progress

    quiet = _Progress()  # 2 s before its first line: a short read says nothing
    quiet(10_000)
    quiet.done(12_345)
    assert capsys.readouterr().err == ""
    loud = _Progress(after_s=0.0, every_s=0.0)
    loud(10_000)
    loud(20_000)
    loud.done(23_456)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == [
        "kasmina replay: 10000 entries of the log read and verified…",
        "kasmina replay: 20000 entries of the log read and verified…",
    ]
    assert lines[2].startswith("kasmina replay: 23456 entries read and verified in ")
