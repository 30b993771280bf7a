"""Pacing: is a run's inbox traffic drained? (bus reads only, so it works across processes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio

from bus import Bus, BusClosed, BusError, GroupInfo, StreamInfo
from contracts import streams
from scenarios import quiet

__all__ = [
    "Served",
    "backlog_of",
    "drained",
    "inbox_backlog",
    "run_inboxes",
    "wait_drained",
    "wait_flushed",
    "wait_quiet",
]


async def backlog_of(bus: Bus, inboxes: Iterable[str]) -> int:
    """Entries of ``inboxes`` that are unread or read but not acked (0 = drained)."""
    backlog = 0
    for name in inboxes:
        info = await bus.info(name, oldest=False)
        if not info.groups:
            backlog += info.length  # nobody consumed this inbox yet
        backlog += sum(_unfinished(g, info) for g in info.groups)
    return backlog


def _unfinished(group: GroupInfo, info: StreamInfo) -> int:
    """Entries of the stream ``group`` has not finished: pending, plus those not yet delivered
    (its lag; 1 when the server cannot count it but the group is behind the last entry)."""
    lag = group.lag if group.lag is not None else int(group.last_delivered != info.last_id)
    return group.pending + lag


async def inbox_backlog(bus: Bus, run: str, exclude: Collection[str] = ()) -> int:
    """Backlog of every inbox of the run (found by a keyspace scan; see :func:`backlog_of`)."""
    names = await bus.streams(streams.prefix(run) + "inbox:*")
    return await backlog_of(bus, [n for n in names if n not in exclude])


async def drained(bus: Bus, run: str) -> bool:
    """True if every inbox of the run is read and acked right now (False while Redis is down or
    refuses: any bus error but a closed bus, which is raised)."""
    try:
        return await inbox_backlog(bus, run) == 0
    except BusClosed:
        raise
    except BusError:
        return False


async def _log_length(bus: Bus, run: str) -> int:
    """The event log's length, or -2 while it cannot be read (Redis down, a key of the wrong
    type)."""
    try:
        return (await bus.info(streams.events(run), oldest=False)).length
    except BusClosed:
        raise
    except BusError:
        return -2


async def wait_drained(
    bus: Bus,
    run: str,
    *,
    timeout_s: float,
    flush: Callable[[], Awaitable[object]] | None = None,
    poll_s: float = 0.005,
) -> bool:
    """Wait until the run is drained twice in a row with the event log unchanged.

    ``flush`` (the trainer's outbox flush) runs before every check. False if ``timeout_s`` passed
    first: the caller goes on (a crashed actor only slows the run down; the harness reports it).
    Bus trouble of any kind (Redis down, a refusal, a flush that cannot publish) only means "not
    settled yet": nothing is raised but :class:`~bus.BusClosed`, and a flush that hangs on an
    unreachable Redis is cut off at the deadline (its batch is kept for the next flush)."""
    with anyio.move_on_after(timeout_s):
        previous = -1
        while True:
            length = await _quiet_length(bus, run, flush)
            if length == previous and length >= 0:
                return True
            previous = length
            await anyio.sleep(poll_s)
    return False


async def _quiet_length(bus: Bus, run: str, flush: Callable[[], Awaitable[object]] | None) -> int:
    """After ``flush``: the event log's length if every inbox is drained, else -1 (-2: the log
    cannot be read)."""
    if flush is not None:
        try:
            await flush()
        except BusClosed:
            raise
        except BusError:
            return -1
    if not await drained(bus, run):
        return -1
    return await _log_length(bus, run)


async def wait_flushed(flush: Callable[[], Awaitable[object]], timeout_s: float) -> bool:
    """``flush()``, cut off after ``timeout_s`` (a flush waits out an unreachable Redis; its
    batch is kept for the next one); False if it was cut off."""
    with anyio.move_on_after(timeout_s):
        await flush()
        return True
    return False


#: an inbox and the consumer group that drains it (:func:`contracts.streams.group`)
Served = tuple[str, str]


def run_inboxes(run: str, slots: Iterable[str], world_size: int) -> list[Served]:
    """The inboxes a run with these slots and ranks has, each with its actor's group: the
    SeedActor of every slot, the singleton actors, the ExecutionActor of every rank. Known from
    the trainer's own layout, not from Redis, which anyone who can write to it could add to."""
    out = [(streams.inbox(run, "seed", s), streams.group(f"seed:{s}")) for s in sorted(slots)]
    out += [
        (streams.inbox(run, k), streams.group(k))
        for k in ("gate", "safety", "telemetry", "barrier")
    ]
    out += [
        (streams.inbox(run, "execution", str(r)), streams.group(f"execution:{r}"))
        for r in range(world_size)
    ]
    return out


async def _group_state(bus: Bus, inbox: str, group: str) -> tuple[int, str]:
    """``group``'s backlog on ``inbox`` and the id it last delivered; before the group exists
    (its actor has not read yet), the inbox's length. Other groups (anyone may add one) are not
    looked at."""
    info = await bus.info(inbox, oldest=False, group=group)
    for g in info.groups:
        if g.name == group:
            return _unfinished(g, info), g.last_delivered
    return info.length, ""


async def wait_quiet(
    bus: Bus,
    served: Collection[Served],
    *,
    timeout_s: float,
    flush: Callable[[], Awaitable[object]] | None = None,
    poll_s: float = 0.005,
    settle: quiet.Settle | None = None,
) -> bool:
    """Wait until every inbox of ``served`` is drained by its group, twice in a row with no
    group having delivered anything in between; False if ``timeout_s`` passed first, or on bus
    trouble (as :func:`wait_drained`). Only these inboxes and groups count: a stream, a group, a
    registry entry or an event someone else wrote cannot hold the wait up. With ``settle`` (a
    trainer's, kept across its settles), only entries that can have an effect count
    (:mod:`scenarios.quiet`): junk or copies written into an inbox cannot hold it up either."""
    if settle is not None:
        return await _wait_settle(bus, served, settle, timeout_s, flush, poll_s)
    with anyio.move_on_after(timeout_s):
        previous: tuple[str, ...] | None = None
        while True:
            marks = await _quiet_marks(bus, served, flush)
            if marks is not None and marks == previous:
                return True
            previous = marks
            await anyio.sleep(poll_s)
    return False


async def _quiet_marks(
    bus: Bus, served: Collection[Served], flush: Callable[[], Awaitable[object]] | None
) -> tuple[str, ...] | None:
    """After ``flush``: the ids the groups last delivered if every backlog is 0, else None."""
    try:
        if flush is not None:
            await flush()
        marks = []
        for inbox, group in served:
            backlog, mark = await _group_state(bus, inbox, group)
            if backlog:
                return None
            marks.append(mark)
        return tuple(marks)
    except BusClosed:
        raise
    except BusError:
        return None


async def _wait_settle(
    bus: Bus,
    served: Collection[Served],
    settle: quiet.Settle,
    timeout_s: float,
    flush: Callable[[], Awaitable[object]] | None,
    poll_s: float,
) -> bool:
    with anyio.move_on_after(timeout_s):
        previous: tuple[tuple[int, int], ...] | None = None
        while True:
            marks = await settle.marks(bus, served, flush)
            if marks is not None and marks == previous:
                return True
            previous = marks
            await anyio.sleep(poll_s)
    return False
