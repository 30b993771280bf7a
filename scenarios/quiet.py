"""A trainer's settle that only traffic of effect can hold up.

:func:`pacing.wait_quiet` waits until the run's inboxes are drained twice in a row with nothing
delivered in between, so a writer who trickles junk into any inbox (entries the actors reject at
once) kept every boundary of a lockstep trainer waiting for its whole timeout. A :class:`Settle`
(one per trainer, kept across its settles) counts only entries that can have an effect: they
verify (MAC, kind, run and destination), could be fresh to their actor (stamped within twice
the clock tolerance of the trainer's now: the actor judges by its own clock), and carry a message id this trainer has not seen in the run's inboxes
before (a copy of a genuine frame, which the actor refuses as ``replayed``, never counts: the
original comes first in its inbox, and every inbox is read from that window's start on).
An inbox is settled when every entry of effect in it has been delivered to its group and is no
longer pending there (asked of those entries alone: entries a writer holds pending in the group
under a consumer name of its own do not count), or has gone stale or been deleted; the run is
settled when every inbox is, twice in a row, with no entry of effect appended in between.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from actors.hosting.inbox import FRAME
from bus import Bus, BusClosed, BusError, Entry, GroupInfo, StreamInfo, parse_id
from contracts import ContractError, Verifier

__all__ = ["Settle"]

_PAGE = 100  # entries read per range call while scanning an inbox (a bound on its memory)
_NONE = (0, 0)
Served = tuple[str, str]


@dataclass
class _Watch:
    """One inbox: scanned up to ``scanned``; the newest entry of effect found; the entries of
    effect not yet known to be acked (id -> (entry id, stamp))."""

    scanned: str
    newest: tuple[int, int] = _NONE
    waiting: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)


class Settle:
    """What a trainer's settles have seen of the run's inboxes (see the module's text)."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier.with_replay()
        # an actor judges freshness by its own clock, within the tolerance of the trainer's
        self._slack_ns = int(2 * verifier.tolerance_s * 1e9)
        self._seen: dict[str, int] = {}  # message id -> its stamp, while it could count
        self._watches: dict[str, _Watch] = {}
        self._now_ns = 0

    async def marks(
        self,
        bus: Bus,
        served: Collection[Served],
        flush: Callable[[], Awaitable[object]] | None,
    ) -> tuple[tuple[int, int], ...] | None:
        """After ``flush``: each inbox's newest entry of effect if every inbox is settled, else
        None (also on bus trouble)."""
        self._now_ns = time.time_ns()
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= self._now_ns - self._slack_ns}
        try:
            if flush is not None:
                await flush()
            settled = True
            for inbox, group in served:
                settled = await self._settled(bus, inbox, group) and settled
            return tuple(self._watches[inbox].newest for inbox, _ in served) if settled else None
        except BusClosed:
            raise
        except BusError:
            return None

    def _of_effect(self, entry: Entry) -> int | None:
        """The stamp of an entry of effect, None for anything else."""
        frame = entry.fields.get(FRAME)
        if frame is None:
            return None
        try:
            env = self._verifier.open(frame, stream=entry.stream)
        except ContractError:
            return None
        if abs(env.ts_ns - self._now_ns) > self._slack_ns or env.id in self._seen:
            return None
        self._seen[env.id] = env.ts_ns
        return env.ts_ns

    async def _settled(self, bus: Bus, inbox: str, group: str) -> bool:
        """Whether every entry of effect in ``inbox`` has been read and acked by ``group``."""
        watch = self._watches.get(inbox)
        if watch is None:  # read from the clock tolerance ago on (originals before copies)
            since_ms = max(0, (self._now_ns - self._slack_ns) // 1_000_000)
            watch = self._watches[inbox] = _Watch(f"{since_ms}-0")
        mine = _group(await bus.info(inbox, oldest=False, group=group), group)
        await self._scan(bus, inbox, watch)
        # an entry gone stale no actor would act on; one deleted before delivery never comes
        old = self._now_ns - self._slack_ns
        watch.waiting = {k: v for k, v in watch.waiting.items() if v[1] >= old}
        if not watch.waiting:
            return True
        if mine is None:  # its actor has not read yet
            return False
        return await _acked(bus, inbox, group, watch, parse_id(mine.last_delivered))

    async def _scan(self, bus: Bus, inbox: str, watch: _Watch) -> None:
        """Read the entries appended since the last look; note those of effect."""
        while True:
            page = await bus.range(inbox, start=f"({watch.scanned}", count=_PAGE)
            for entry in page:
                stamp = self._of_effect(entry)
                if stamp is not None:
                    key = parse_id(entry.id)
                    watch.newest, watch.waiting[key] = key, (entry.id, stamp)
            if page:
                watch.scanned = page[-1].id
            if len(page) < _PAGE:
                break


async def _acked(
    bus: Bus, inbox: str, group: str, watch: _Watch, delivered: tuple[int, int]
) -> bool:
    """Whether ``group`` has every entry ``watch`` waits for delivered and no longer pending
    (asked of those entries alone: a writer's own pending entries do not count); the acked
    ones leave ``watch.waiting``."""
    ahead = [v[0] for k, v in watch.waiting.items() if k > delivered]
    if ahead and any([await bus.range(inbox, start=e, end=e) for e in ahead]):
        return False  # not yet delivered (and still there)
    pending = await bus.pending_of(inbox, group, [v[0] for v in watch.waiting.values()])
    watch.waiting = {k: v for k, v in watch.waiting.items() if v[0] in pending}
    return not watch.waiting


def _group(info: StreamInfo, group: str) -> GroupInfo | None:
    return next((g for g in info.groups if g.name == group), None)
