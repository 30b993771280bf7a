"""A trainer's settle that only authentic traffic can hold up.

:func:`pacing.wait_quiet` waits until the run's inboxes are drained twice in a row with nothing
delivered in between, so a writer who trickles junk into any inbox (entries the actors reject at
once) kept every boundary of a lockstep trainer waiting for its whole timeout. With a verifier,
the settle counts only entries that could have an effect: they verify (replay mode: MAC, kind,
run and destination), carry a message id new to this settle, and were stamped no more than
:data:`SLACK_S` before the settle began (a copy of an older genuine frame has no effect: the
actor refuses it). An inbox is settled when every entry of effect in it is acked by its group
(every entry up to the id the group had delivered when it last had nothing pending); the run is
settled when every inbox is, twice in a row, with no entry of effect appended in between.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from actors.hosting.inbox import FRAME
from bus import Bus, BusClosed, BusError, Entry, GroupInfo, StreamInfo, parse_id
from contracts import ContractError, Verifier

__all__ = ["SLACK_S", "Authentic", "settle_marks"]

SLACK_S = 5.0  # an entry stamped this long before a settle began may still be the settle's work
_PAGE = 1000  # entries read per range call while scanning an inbox
_NONE = (0, 0)


class Authentic:
    """Tells entries that can have an effect from anything else a writer adds; it remembers
    the message ids it saw (as long as they could count), so a copy counts once at most."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier.with_replay()
        self._seen: dict[str, int] = {}  # message id -> its stamp
        self.since_ns = 0

    def begin(self) -> None:
        """A settle begins: entries stamped more than ``SLACK_S`` before now count no more."""
        self.since_ns = time.time_ns() - int(SLACK_S * 1e9)
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= self.since_ns}

    def __call__(self, entry: Entry) -> bool:
        frame = entry.fields.get(FRAME)
        if frame is None:
            return False
        try:
            env = self._verifier.open(frame, stream=entry.stream)
        except ContractError:
            return False
        if env.ts_ns < self.since_ns or env.id in self._seen:
            return False
        self._seen[env.id] = env.ts_ns
        return True


@dataclass
class _Watch:
    """One inbox in one settle: scanned up to ``scanned``; the newest entry of effect found;
    the id its group had delivered when it last had nothing pending (everything up to it acked;
    None: not seen yet)."""

    scanned: str
    newest: tuple[int, int] = _NONE
    drained_at: tuple[int, int] | None = None


async def start_watches(bus: Bus, served: Collection[tuple[str, str]]) -> dict[str, _Watch] | None:
    """Each inbox's watch, from what its group has delivered (the whole inbox before the group
    exists); None on bus trouble."""
    try:
        watches = {}
        for inbox, group in served:
            mine = _group(await bus.info(inbox), group)
            watches[inbox] = _Watch(mine.last_delivered if mine is not None else "0-0")
        return watches
    except BusClosed:
        raise
    except BusError:
        return None


async def settle_marks(
    bus: Bus,
    served: Collection[tuple[str, str]],
    watches: dict[str, _Watch],
    judge: Authentic,
    flush: Callable[[], Awaitable[object]] | None,
) -> tuple[tuple[int, int], ...] | None:
    """After ``flush``: each inbox's newest entry of effect if every inbox is settled, else
    None (also on bus trouble)."""
    try:
        if flush is not None:
            await flush()
        settled = True
        for inbox, group in served:
            settled = await _settled(bus, inbox, group, watches[inbox], judge) and settled
        return tuple(watches[inbox].newest for inbox, _ in served) if settled else None
    except BusClosed:
        raise
    except BusError:
        return None


async def _settled(bus: Bus, inbox: str, group: str, watch: _Watch, judge: Authentic) -> bool:
    """Whether every entry of effect in ``inbox`` has been read and acked by ``group``."""
    mine = _group(await bus.info(inbox), group)
    while True:  # the entries appended since the last look
        page = await bus.range(inbox, start=f"({watch.scanned}", count=_PAGE)
        for entry in page:
            if judge(entry):
                watch.newest = parse_id(entry.id)
        if page:
            watch.scanned = page[-1].id
        if len(page) < _PAGE:
            break
    if mine is None:  # its actor has not read yet: settled while nothing of effect waits
        return watch.newest == _NONE
    if mine.pending == 0:  # everything the group was given is acked
        watch.drained_at = parse_id(mine.last_delivered)
    return watch.drained_at is not None and watch.newest <= watch.drained_at


def _group(info: StreamInfo, group: str) -> GroupInfo | None:
    return next((g for g in info.groups if g.name == group), None)
