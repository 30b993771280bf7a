"""Nonce guard: refuse a message id seen before inside the TTL.

The protocol is small so backends can live elsewhere: the in-memory one is here, the Redis one
(``SET NX PX``, shared across processes, survives restarts) is in ``bus``'s neighbourhood and never
imported by ``contracts``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from contracts.errors import Overloaded


@runtime_checkable
class NonceGuard(Protocol):
    """Admits a message id once per TTL (per delivery token).

    ``since_ns``: the guard's memory is complete for messages stamped from then on (0: always);
    after a restart that lost it, a message stamped earlier cannot be judged and is refused."""

    since_ns: int

    async def admit(self, message_id: str, token: str, ttl_ms: int) -> bool:
        """True if unseen (now recorded) or seen with the same token; False for a replay."""
        ...

    async def admit_many(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """``admit`` for a batch of ``(message_id, token)`` pairs (one round trip where remote)."""
        ...


class MemoryNonceGuard:
    """Bounded in-process nonce store, O(1) amortised per check.

    Entries expire in insertion order (TTLs are equal), so expiry pops from the head of a deque. When
    ``capacity`` unexpired ids are held the guard fails closed (``Overloaded``) instead of forgetting
    an id early, which would open a replay window.
    """

    __slots__ = ("_capacity", "_clock", "_order", "_seen", "since_ns")

    def __init__(
        self, capacity: int = 1_000_000, *, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._clock = clock
        self._seen: dict[str, tuple[str, int]] = {}
        self.since_ns = 0  # in-process: the verifier's own lifetime is the memory
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: int) -> None:
        order, seen = self._order, self._seen
        while order and order[0][0] <= now:
            expiry, mid = order.popleft()
            entry = seen.get(mid)
            if entry is not None and entry[1] == expiry:
                del seen[mid]

    def check(self, message_id: str, token: str, ttl_ms: int) -> bool:
        """Synchronous form of ``admit``."""
        now = self._clock()
        self._expire(now)
        entry = self._seen.get(message_id)
        if entry is not None:
            return entry[0] == token
        if len(self._seen) >= self._capacity:
            raise Overloaded(f"nonce store holds {self._capacity} unexpired ids")
        expiry = now + ttl_ms * 1_000_000
        self._seen[message_id] = (token, expiry)
        self._order.append((expiry, message_id))
        return True

    async def admit(self, message_id: str, token: str, ttl_ms: int) -> bool:
        """See ``NonceGuard.admit``."""
        return self.check(message_id, token, ttl_ms)

    async def admit_many(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """See ``NonceGuard.admit_many``."""
        return [self.check(m, t, ttl_ms) for m, t in items]
