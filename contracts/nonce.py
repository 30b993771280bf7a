"""Nonce guard: refuse a message id seen before, until the message's own deadline.

A message is live until its deadline (its timestamp plus the clock tolerance); its nonce is kept
exactly that long. A guard refuses to record a message whose deadline has passed by the guard's
own clock (``late``), so a replay arrives either while the nonce is held (refused as
replayed) or after the deadline (refused as stale): no replay window opens, whatever the clock
differences between the receivers and the store.

The protocol is small so backends can live elsewhere: the in-memory one is here, the Redis one
(``SET NX PXAT``, shared across processes, survives restarts) is in ``bus``'s neighbourhood and
never imported by ``contracts``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

from contracts.errors import Overloaded

__all__ = ["Claim", "MemoryNonceGuard", "NonceGuard"]

#: What a nonce guard found for one ``(message id, token, deadline)``: ``new`` (unseen: recorded
#: until its deadline), ``redelivered`` (held with the same token: a redelivery of one entry),
#: ``replayed`` (held with another token), ``late`` (its deadline has passed by the guard's clock:
#: not recorded, refused as stale). Plain strings, so a guard outside ``contracts`` (``bus``
#: imports no other project package) returns the same type.
Claim = Literal["new", "redelivered", "replayed", "late"]


@runtime_checkable
class NonceGuard(Protocol):
    """Admits a message id once (per delivery token) until its deadline.

    ``since_ns``: the guard's memory is complete for messages stamped from then on (0: always);
    after a restart that lost it, a message stamped earlier cannot be judged and is refused."""

    since_ns: int

    async def admit(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        """Record the id until ``deadline_ms`` (Unix ms) unless held or late; say which."""
        ...

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        """``admit`` for a batch of ``(message_id, token, deadline_ms)`` (one round trip where
        remote)."""
        ...


class MemoryNonceGuard:
    """Bounded in-process nonce store, O(log n) per check.

    ``clock``: Unix time in ns (the deadlines are Unix ms). Entries leave in deadline order (a
    heap). When ``capacity`` unexpired ids are held the guard fails closed (``Overloaded``) instead
    of forgetting an id early, which would open a replay window.
    """

    __slots__ = ("_capacity", "_clock", "_order", "_seen", "since_ns")

    def __init__(
        self, capacity: int = 1_000_000, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._clock = clock
        self._seen: dict[str, tuple[str, int]] = {}  # id -> (token, deadline ms)
        self.since_ns = 0  # in-process: the verifier's own lifetime is the memory
        self._order: list[tuple[int, str]] = []  # heap of (deadline ms, id)

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now_ms: int) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] <= now_ms:
            deadline, mid = heapq.heappop(order)
            entry = seen.get(mid)
            if entry is not None and entry[1] == deadline:
                del seen[mid]

    def check(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        """Synchronous form of ``admit``."""
        now_ms = self._clock() // 1_000_000
        self._expire(now_ms)
        if deadline_ms <= now_ms:
            return "late"
        entry = self._seen.get(message_id)
        if entry is not None:
            return "redelivered" if entry[0] == token else "replayed"
        if len(self._seen) >= self._capacity:
            raise Overloaded(f"nonce store holds {self._capacity} unexpired ids")
        self._seen[message_id] = (token, deadline_ms)
        heapq.heappush(self._order, (deadline_ms, message_id))
        return "new"

    async def admit(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        """See ``NonceGuard.admit``."""
        return self.check(message_id, token, deadline_ms)

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        """See ``NonceGuard.admit_many``."""
        return [self.check(m, t, d) for m, t, d in items]
