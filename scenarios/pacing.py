"""Pacing: is a run's inbox traffic drained? (bus reads only, so it works across processes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio

from bus import Bus, BusClosed, BusError
from contracts import streams

__all__ = ["backlog_of", "drained", "inbox_backlog", "wait_drained", "wait_flushed"]


async def backlog_of(bus: Bus, inboxes: Iterable[str]) -> int:
    """Entries of ``inboxes`` that are unread or read but not acked (0 = drained)."""
    backlog = 0
    for name in inboxes:
        info = await bus.info(name)
        if not info.groups:
            backlog += info.length  # nobody consumed this inbox yet
        for group in info.groups:
            backlog += group.pending
            if group.lag is not None:
                backlog += group.lag
            elif group.last_delivered != info.last_id:
                backlog += 1
    return backlog


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
        return (await bus.info(streams.events(run))).length
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
