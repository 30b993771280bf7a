"""Routing: which inbox streams a message for another actor goes to.

A message for a keyed actor kind (``seed``, ``execution``) with no key fans out to every instance:
the inboxes in the kind's registry (each instance registers its inbox when it starts serving),
cached for :data:`ROUTE_TTL_S`. A registry is a plain Redis set anyone with write access can add
to, so only names that are inboxes of this run's instances of that kind are routed to, and for the
ExecutionActors only ranks below the run's world size (``barrier.world_size``: a writer's thousands
of made-up ranks would otherwise multiply every barrier commit into as many uncapped streams;
a rank at or above it is logged as an error once, since a host whose config lacks the run's world
size would cut real ranks off). Slot names have no such bound (no cap either: a cap would let a
writer's names push real slots out). The ExecutionActor's outbox routes by kind (:data:`OUTBOX`;
the kinds of :data:`STREAMS` go to a run stream, capped).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from time import monotonic

from google.protobuf.message import Message

from bus import Bus
from contracts import kinds, streams

__all__ = ["ALSO", "OUTBOX", "ROUTE_TTL_S", "STREAMS", "Router"]

log = logging.getLogger("kasmina.actors")

ROUTE_TTL_S = 2.0  # fan-out targets (every slot's or rank's inbox) are re-discovered this often
KEYED = frozenset({"seed", "execution"})

#: where the ExecutionActor's outbox sends each kind: (actor kind, whose key) with key "slot" for
#: the slot the message names, "slots" for every slot of the rank, "" for a singleton's inbox
OUTBOX: dict[str, tuple[str, str]] = {
    kinds.EXEC_ACK: ("seed", "slot"),
    kinds.STEP_REPORT: ("seed", "slots"),
    kinds.TELEMETRY_RAW: ("telemetry", ""),
    kinds.TELEMETRY_BATCH: ("telemetry", ""),
    kinds.SAFETY_SIGNAL: ("safety", ""),
    kinds.BARRIER_VOTE: ("barrier", ""),
}

#: kinds of the ExecutionActor's outbox that also go to a singleton's inbox: the SafetyActor
#: learns the run's slots and its training step from step reports (breakers registered and
#: ticked, the emergency threshold counted over every slot, not only those that misbehaved)
ALSO: dict[str, str] = {kinds.STEP_REPORT: "safety"}

#: kinds of the ExecutionActor's outbox that go to a run stream rather than an actor's inbox, and
#: that stream's approximate cap
STREAMS: dict[str, tuple[Callable[[str], str], int]] = {
    kinds.PRUNING_IMPORTANCE: (streams.pruning, 10_000),
    kinds.PRUNING_ACK: (streams.pruning, 10_000),
}


class Router:
    """Resolves (actor kind, key) to inbox streams of one run."""

    def __init__(self, bus: Bus, run: str, *, world_size: int | None = None) -> None:
        self.bus = bus
        self.run = run
        #: ranks at or above it are no ExecutionActor of the run (None: not bounded)
        self.world_size = world_size
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._registered: set[str] = set()
        self._foreign: set[str] = set()  # registry members refused as routes (logged once)

    async def register(self, inbox: str, *, again: bool = False) -> None:
        """Add a keyed instance's inbox (a slot's, a rank's) to its kind's registry, so fan-out
        reaches it; a singleton's inbox needs none. Once, unless ``again``: an instance renews
        its entry while it serves, so a registry someone emptied is whole again within a period.
        """
        kind, _, key = inbox[len(streams.prefix(self.run)) :].partition(":")[2].partition(":")
        if key and (again or inbox not in self._registered):
            await self.bus.register(streams.registry(self.run, kind), inbox)
            self._registered.add(inbox)

    def _own(self, actor: str, names: Sequence[str]) -> list[str]:
        """The names that are inboxes of ``actor`` instances of this run; anything else (another
        run's inbox added to the registry by someone with write access to Redis) is dropped, and
        so are ranks at or above the world size. Linear in the names (a writer may add many)."""
        if actor == "execution" and self.world_size is not None:
            ranks = {streams.inbox(self.run, actor, str(r)) for r in range(self.world_size)}
            present = set(names)
            own = sorted(ranks & present)
            self._log_dropped(actor, present - ranks, beyond=True)
            return own
        keys = {n: streams.inbox_key(self.run, actor, n) for n in names}
        own = sorted(n for n, key in keys.items() if key is not None)
        self._log_dropped(actor, {n for n, key in keys.items() if key is None}, beyond=False)
        return own

    def _log_dropped(self, actor: str, dropped: set[str], *, beyond: bool) -> None:
        """Log registry names not routed to, once each: foreign ones as a warning, ranks a world
        size excludes as an error (a made-up rank, or this process lacks the run's world size)."""
        new = dropped - self._foreign
        if not new:
            return
        self._foreign |= new
        first = heapq.nsmallest(5, new)
        if beyond:
            log.error("run %s: %d %s routes not among the ranks below barrier.world_size=%s are "
                      "not routed to (%s): made up by a writer, or this process's config lacks "
                      "the run's world size (set barrier.world_size in every process of the run)",
                      self.run, len(new), actor, self.world_size, first)  # fmt: skip
        else:
            log.warning("ignoring foreign %s routes of run %s: %s", actor, self.run, first)

    async def inboxes(self, actor: str, key: str | None) -> list[str]:
        """Inbox streams for (actor, key); key None fans out to every existing instance."""
        if key is not None or actor not in KEYED:
            return [streams.inbox(self.run, actor, key)]
        now = monotonic()
        cached = self._cache.get(actor)
        if cached is not None and now - cached[0] < ROUTE_TTL_S:
            return cached[1]
        found = self._own(actor, await self.bus.members(streams.registry(self.run, actor)))
        if not found:  # instances that predate the registry: find their inboxes by name
            found = self._own(actor, await self.bus.streams(streams.inbox(self.run, actor, "*")))
        if found:
            self._cache[actor] = (now, found)
        if not found and actor == "execution":
            return [streams.inbox(self.run, "execution", "0")]
        return found

    def outbox(self, kind: str, message: Message, slots: Sequence[str]) -> list[str]:
        """Inbox streams for a message of the ExecutionActor's outbox (``slots``: the rank's)."""
        if kind in STREAMS:
            return [STREAMS[kind][0](self.run)]
        route = OUTBOX.get(kind)
        if route is None:
            log.warning("execution outbox: no route for %s", kind)
            return []
        actor, key = route
        if key == "slot":
            return [streams.inbox(self.run, actor, str(getattr(message, "slot", "")))]
        also = [streams.inbox(self.run, ALSO[kind])] if kind in ALSO else []
        if key == "slots":
            return [streams.inbox(self.run, actor, slot) for slot in slots] + also
        return [streams.inbox(self.run, actor), *also]
