"""The ownership lease: one process serves an actor at a time.

A host takes the actor's lease (``streams.lease``, TTL ``bus.owner_ttl_s``) before it serves and
renews it while it does; every commit is fenced on it (:class:`~bus.Fence`), so a process that
lost its lease (paused past the TTL) can no longer write. A second process started for the same
actor stands by until the lease is free.
"""

from __future__ import annotations

import contextlib
import logging
import uuid

import anyio

from bus import Bus, BusError, Fence
from contracts import streams

__all__ = ["OwnershipLease"]

log = logging.getLogger("kasmina.actors")


class OwnershipLease:
    """The lease of the actor served by consumer group ``group`` of ``run``."""

    def __init__(self, bus: Bus, run: str, group: str, *, process: str, ttl_s: float, name: str):
        self.bus = bus
        self.name = name  # for log lines
        self.key = streams.lease(run, group)
        self.token = f"{process or 'shell'}:{uuid.uuid4().hex[:12]}"
        self.ttl_s = ttl_s
        self.fence = Fence(self.key, self.token, int(ttl_s * 1000))
        self.holder = ""  # the other process this one stands by for ("" when none)

    async def take(self) -> bool:
        """Take (or keep) the lease; False while another process holds it (``holder`` says
        which). Bus errors propagate."""
        holder = await self.bus.claim_key(self.key, self.token, self.fence.ttl_ms)
        if holder is not None and holder != self.token:
            if self.holder != holder:
                log.warning(
                    "%s is served by %s: standing by until its lease (%g s) is free",
                    self.name, holder, self.ttl_s,
                )  # fmt: skip
            self.holder = holder
            return False
        if self.holder:
            log.warning("%s: took over from %s", self.name, self.holder)
        self.holder = ""
        return True

    async def renew(self, *, durable: bool = False) -> bool:
        """Extend the lease; False if it expired or another process took it. ``durable``: once
        the replicas the bus waits for hold it, and so every write the server took before it
        (BusUnavailable if they do not within the bus's WAIT timeout)."""
        return await self.bus.renew_key(self.key, self.token, self.fence.ttl_ms, durable=durable)

    async def release(self) -> None:
        """Hand the lease back (best effort: if Redis is away it expires by itself)."""
        with anyio.move_on_after(2.0), contextlib.suppress(BusError):
            await self.bus.release_key(self.key, self.token)
