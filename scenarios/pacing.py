"""Pacing: is a run's inbox traffic drained? (bus reads only, so it works across processes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio

from bus import Bus, BusClosed, BusError
from contracts import streams

__all__ = [
    "backlog_of",
    "drained",
    "inbox_backlog",
    "served_inboxes",
    "wait_drained",
    "wait_flushed",
]


async def backlog_of(
    bus: Bus, inboxes: Iterable[str], served: Collection[str] | None = None
) -> int:
    """Entries of ``inboxes`` that are unread or read but not acked (0 = drained). With
    ``served`` (the inboxes actors registered), an inbox that no consumer group has read and no
    actor serves is left out: nothing will ever drain it (a misspelt slot, a stray writer)."""
    backlog = 0
    for name in inboxes:
        info = await bus.info(name)
        if not info.groups and (served is None or name in served):
            backlog += info.length  # nobody consumed this inbox yet
        for group in info.groups:
            backlog += group.pending
            if group.lag is not None:
                backlog += group.lag
            elif group.last_delivered != info.last_id:
                backlog += 1
    return backlog


async def inbox_backlog(
    bus: Bus, run: str, exclude: Collection[str] = (), *, served_only: bool = False
) -> int:
    """Backlog of every inbox of the run (found by a keyspace scan; see :func:`backlog_of`);
    ``served_only`` leaves out inboxes no actor serves and no group has read."""
    names = await bus.streams(streams.prefix(run) + "inbox:*")
    served = await served_inboxes(bus, run) if served_only else None
    return await backlog_of(bus, [n for n in names if n not in exclude], served)


async def served_inboxes(bus: Bus, run: str) -> set[str]:
    """The inboxes actors of the run registered when they started serving (every kind)."""
    out: set[str] = set()
    for kind in streams.ACTOR_KINDS:
        out.update(await bus.members(streams.registry(run, kind)))
    return out


async def drained(bus: Bus, run: str, *, served_only: bool = False) -> bool:
    """True if every inbox of the run is read and acked right now (False while Redis is down or
    refuses: any bus error but a closed bus, which is raised); ``served_only``: see
    :func:`inbox_backlog`."""
    try:
        return await inbox_backlog(bus, run, served_only=served_only) == 0
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
    served_only: bool = False,
) -> bool:
    """Wait until the run is drained twice in a row with the event log unchanged.

    ``flush`` (the trainer's outbox flush) runs before every check. False if ``timeout_s`` passed
    first: the caller goes on (a crashed actor only slows the run down; the harness reports it).
    Bus trouble of any kind (Redis down, a refusal, a flush that cannot publish) only means "not
    settled yet": nothing is raised but :class:`~bus.BusClosed`, and a flush that hangs on an
    unreachable Redis is cut off at the deadline (its batch is kept for the next flush).
    ``served_only``: an inbox no actor serves and no group has read is not waited for."""
    with anyio.move_on_after(timeout_s):
        previous = -1
        while True:
            length = await _quiet_length(bus, run, flush, served_only)
            if length == previous and length >= 0:
                return True
            previous = length
            await anyio.sleep(poll_s)
    return False


async def _quiet_length(
    bus: Bus, run: str, flush: Callable[[], Awaitable[object]] | None, served_only: bool = False
) -> int:
    """After ``flush``: the event log's length if every inbox is drained, else -1 (-2: the log
    cannot be read)."""
    if flush is not None:
        try:
            await flush()
        except BusClosed:
            raise
        except BusError:
            return -1
    if not await drained(bus, run, served_only=served_only):
        return -1
    return await _log_length(bus, run)


async def wait_flushed(flush: Callable[[], Awaitable[object]], timeout_s: float) -> bool:
    """``flush()``, cut off after ``timeout_s`` (a flush waits out an unreachable Redis; its
    batch is kept for the next one); False if it was cut off."""
    with anyio.move_on_after(timeout_s):
        await flush()
        return True
    return False
