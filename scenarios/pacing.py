"""Pacing: is a run's inbox traffic drained? (bus reads only, so it works across processes)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio

from bus import Bus, BusUnavailable
from contracts import streams

__all__ = ["backlog_of", "drained", "inbox_backlog", "wait_drained"]


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
    """True if every inbox of the run is read and acked right now (False while Redis is down)."""
    try:
        return await inbox_backlog(bus, run) == 0
    except BusUnavailable:
        return False


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
    """
    deadline = time.monotonic() + timeout_s
    previous = -1
    while time.monotonic() < deadline:
        if flush is not None:
            await flush()
        if await drained(bus, run):
            try:
                length = (await bus.info(streams.events(run))).length
            except BusUnavailable:
                length = -2
            if length == previous and length >= 0:
                return True
            previous = length
        else:
            previous = -1
        await anyio.sleep(poll_s)
    return False
