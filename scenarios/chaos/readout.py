"""What a chaos run left behind, read back from Redis: its event log, rejections, stream table
and the time from each kill to the next committed event."""

from __future__ import annotations

from actors import eventlog
from actors.hosting.rejection import written_by_its_actor
from bus import Bus
from contracts import KeyRing, Verifier, streams
from leyline import pb
from scenarios.chaos.check import LogEntry

__all__ = ["commit_gaps", "read_log", "read_rejections", "stream_table"]


async def read_log(bus: Bus, run: str, ring: KeyRing) -> list[LogEntry]:
    """The run's event stream, MAC-checked and parsed, with each event's causation id."""
    verifier = Verifier(ring, replay=True)
    return [
        (r.entry_id, r.kind, r.message, r.envelope.causation_id)
        async for r in eventlog.read_log(bus, streams.events(run), verifier)
        if isinstance(r, eventlog.LogRecord)
    ]


async def read_rejections(bus: Bus, run: str, ring: KeyRing) -> list[pb.Rejection]:
    """Every rejection record of the run (what ``kasmina status`` counts by reason)."""
    verifier = Verifier(ring, replay=True)
    return [
        r.message
        async for r in eventlog.read_log(bus, streams.rejected(run), verifier)
        if isinstance(r, eventlog.LogRecord)
        and isinstance(r.message, pb.Rejection)
        and written_by_its_actor(r.message, r.envelope, verifier, run)
    ]


async def stream_table(bus: Bus, run: str) -> dict[str, dict[str, int]]:
    """Length and pending entries of every stream of the run."""
    table = {}
    for name in await bus.streams(streams.prefix(run) + "*"):
        info = await bus.info(name)
        short = name[len(streams.prefix(run)) :]
        table[short] = {"length": info.length, "pending": sum(g.pending for g in info.groups)}
    return table


async def commit_gaps(bus: Bus, run: str, killed_ms: list[int]) -> list[float]:
    """Per kill time: seconds until the first event-log entry committed after it (entry ids
    carry the server's clock in ms)."""
    ids = [int(e.id.split("-")[0]) for e in await bus.range(streams.events(run))]
    out = []
    for ms in killed_ms:
        after = [i for i in ids if i > ms]
        if after:
            out.append((min(after) - ms) / 1000)
    return out
