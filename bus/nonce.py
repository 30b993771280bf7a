"""Redis-backed nonce guard: ``SET key token NX PX ttl``, shared across processes, kept by the server.

It satisfies the ``NonceGuard`` protocol of ``contracts`` structurally (bus imports no other project
package). Seeing a message id again with the same token (the stream entry it was delivered as) is a
redelivery and admitted; with another token it is a replay and refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from .api import Bus

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

    async def admit(self, message_id: str, token: str, ttl_ms: int) -> bool:
        """True if unseen (now recorded for ``ttl_ms``) or seen with the same token."""
        (ok,) = await self.admit_many([(message_id, token)], ttl_ms)
        return ok

    async def admit_many(self, items: Sequence[tuple[str, str]], ttl_ms: int) -> list[bool]:
        """``admit`` for a batch of ``(message_id, token)`` in one round trip."""
        since_ms, found = await self._bus.claim_nonces(
            self.since_key, [(self.key(m), t) for m, t in items], ttl_ms
        )
        self.since_ns = since_ms * 1_000_000
        return [f is None or f == t for f, (_, t) in zip(found, items, strict=True)]
