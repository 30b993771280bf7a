"""Redis-backed nonce guard: ``SET key token NX PXAT deadline``, shared across processes, kept by
the server, which also judges each deadline by its own clock.

It satisfies the ``NonceGuard`` protocol of ``contracts`` structurally. Seeing a message id again
with the same token (the stream entry it was delivered as) is a redelivery and admitted; with
another token it is a replay and refused; past its deadline it is late (stale), never recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .api import Bus

#: ``contracts.nonce.Claim`` (the same strings; bus imports no other project package)
Claim = Literal["new", "redelivered", "replayed", "late"]

__all__ = ["RedisNonceGuard"]


class RedisNonceGuard:
    """Nonce guard over a :class:`Bus` (any adapter: Redis, fakeredis or memory)."""

    __slots__ = ("_bus", "_prefix", "since_ns")

    def __init__(self, bus: Bus, prefix: str) -> None:
        self._bus = bus
        self._prefix = prefix
        #: the nonce memory is complete for messages stamped from here on; a message stamped
        #: earlier (before a restart that lost the memory) cannot be judged and is refused
        self.since_ns = 0

    @property
    def since_key(self) -> str:
        """The key holding the time (ms) the nonce memory began."""
        return f"{self._prefix}nonce-since"

    def key(self, message_id: str) -> str:
        """The key holding a message id's token."""
        return f"{self._prefix}nonce:{message_id}"

    async def admit(self, message_id: str, token: str, deadline_ms: int) -> Claim:
        """Record the id until ``deadline_ms`` (Unix ms) unless held or late by the server's
        clock; say which."""
        (claim,) = await self.admit_many([(message_id, token, deadline_ms)])
        return claim

    async def admit_many(self, items: Sequence[tuple[str, str, int]]) -> list[Claim]:
        """``admit`` for a batch of ``(message_id, token, deadline_ms)`` in one round trip."""
        prefix = f"{self._prefix}nonce:"  # ``key``, by the bus
        since_ms, found = await self._bus.claim_nonces(self.since_key, items, prefix=prefix)
        self.since_ns = since_ms * 1_000_000
        if found.count(None) == len(found):  # all new: no loop
            return ["new"] * len(found)
        return [_claim(f, t) for f, (_, t, _) in zip(found, items, strict=True)]


def _claim(found: str | bool | None, token: str) -> Claim:
    if found is None:
        return "new"
    if isinstance(found, bool):
        return "late"
    return "redelivered" if found == token else "replayed"
