"""The message ids a host has committed, kept in its own memory until each could still be fresh.

Redis holds the two records that stop a message being decided twice: its nonce (a replayed frame)
and its commit marker (a rewound group, a re-read entry). Someone who can write to Redis can
delete both. A host therefore also remembers, in process, every message id it has committed, for
as long as a frame with that id can pass the freshness check (its stamp is at most the clock
tolerance ahead of the host's clock when it arrives, and is refused as stale once the tolerance
has passed, so two tolerances from the commit is enough). A rebuild fills the memory from the
event log: every event names the message that caused it.

The memory is bounded (``limit`` ids, oldest dropped first and counted): at rates that exceed it,
the Redis records are the only guard for the dropped ids.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate

from bus import Entry, parse_id

__all__ = ["RANGES_LIMIT", "RECENT_LIMIT", "AnsweredRanges", "RecentIds", "SeenOnce"]

RECENT_LIMIT = 100_000
RANGES_LIMIT = 4_096  # shed runs remembered (the oldest dropped first)
IdPair = tuple[int, int]


class RecentIds:
    """Committed message ids, each kept until a deadline (ns, by ``clock``)."""

    __slots__ = ("_clock", "_keep_ns", "_limit", "_until", "evicted")

    def __init__(
        self,
        tolerance_s: float,
        *,
        limit: int = RECENT_LIMIT,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._keep_ns = int(2 * tolerance_s * 1e9)
        self._limit = limit
        self._clock = clock
        # insertion order, oldest first (an OrderedDict: dropping from the front stays O(1))
        self._until: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0  # ids dropped to stay within the limit before their deadline

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._until

    def __len__(self) -> int:
        return len(self._until)

    def entries(self, batch: Sequence[Entry], committed: Sequence[str]) -> list[str]:
        """Entry ids of ``batch`` (``committed``: the message id each may have been committed
        under, ``actors.hosting.inbox.committed_ids``) whose message was committed, though the
        Redis records of it (nonce, commit marker) may be gone."""
        until = self._until
        return [e.id for e, m in zip(batch, committed, strict=True) if m and m in until]

    def add_committed(self, message_ids: Iterable[str]) -> None:
        """Remember ids committed now (each kept two tolerances from now)."""
        until = self._clock() + self._keep_ns
        self._store(((m, until) for m in message_ids), self._clock())

    def add_caused(self, message_id: str, event_ts_ns: int) -> None:
        """Remember the id that caused an event stamped ``event_ts_ns`` (found in a rebuild),
        unless that event is too old for its cause to be fresh still."""
        if message_id:
            self._store([(message_id, event_ts_ns + self._keep_ns)], self._clock())

    def _store(self, items: Iterable[tuple[str, int]], now: int) -> None:
        until = self._until
        for message_id, deadline in items:
            if deadline <= now:
                continue
            until[message_id] = deadline
            until.move_to_end(message_id)  # a renewed id is dropped last
        self._prune(now)

    def _prune(self, now: int) -> None:
        """Drop the expired ids at the front, then the oldest beyond the limit."""
        until = self._until
        while until:
            deadline = next(iter(until.values()))
            if deadline > now and len(until) <= self._limit:
                return
            if deadline > now:
                self.evicted += 1
            until.popitem(last=False)


class AnsweredRanges:
    """Runs of inbox entries a host shed (acked undecided, their senders told ``overloaded``),
    each kept two tolerances: a rewound group (``XGROUP SETID``) delivers them again, and one
    must not be decided then, or its sender, told it was shed, would see it applied (and apply
    it twice by sending it again). Shed entries leave no nonce and no commit marker in Redis.

    Looked up once per batch: the runs are kept sorted by their first id, so an entry costs a
    bisection, and a batch past every run (the usual case) one comparison."""

    __slots__ = ("_clock", "_keep_ns", "_last", "_ranges", "_reach", "_starts")

    def __init__(self, tolerance_s: float, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._keep_ns = int(2 * tolerance_s * 1e9)
        self._clock = clock
        self._ranges: list[tuple[IdPair, IdPair, int]] = []  # (first, last, deadline ns), by first
        self._starts: list[IdPair] = []
        self._reach: list[IdPair] = []
        self._last: IdPair = (-1, -1)  # the highest last id of any run kept

    def add(self, first: str, last: str) -> None:
        """Remember the entries from ``first`` to ``last`` (ids, inclusive) as answered."""
        now = self._clock()
        kept = [r for r in self._ranges if r[2] > now]
        if len(kept) >= RANGES_LIMIT:  # the oldest to expire go first
            kept = sorted(sorted(kept, key=lambda r: r[2])[-(RANGES_LIMIT - 1) :])
        kept.append((parse_id(first), parse_id(last), now + self._keep_ns))
        kept.sort()
        self._ranges = kept
        self._starts = [r[0] for r in kept]
        self._reach = list(accumulate((r[1] for r in kept), max))  # the furthest run end so far
        self._last = self._reach[-1]

    def entries(self, batch: Sequence[Entry]) -> list[str]:
        """Entry ids of ``batch`` inside a remembered run."""
        if not self._ranges:
            return []
        now = self._clock()
        return [e.id for e in batch if self._covers(parse_id(e.id), now)]

    def _covers(self, at: IdPair, now: int) -> bool:
        if at > self._last:
            return False
        i = bisect_right(self._starts, at) - 1
        while i >= 0 and self._reach[i] >= at:  # a run starting here or before may reach it
            _, last, until = self._ranges[i]
            if last >= at and until > now:
                return True
            i -= 1
        return False


class SeenOnce:
    """Keys seen so far, the oldest forgotten beyond ``limit`` (a redelivery guard kept in
    process: :meth:`first` is true once per key)."""

    __slots__ = ("_keys", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def first(self, key: str) -> bool:
        """True the first time ``key`` is seen (remembered from then on)."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)
        return True
