"""Housekeeping of a serving actor: heartbeats, inbox retention, state digests, its timer.

A core with a timer (the BarrierActor's deadlines) is asked every ``timer_s`` what the clock
calls for; what it returns is signed and sent to the actor's own inbox, so a timeout is decided,
committed and replayed like any other input, on time even when no other message arrives.

Only the process that holds an actor's lease does any of it: a standby is not the actor (the
holder's beats say who serves) and does not repeat the holder's trims.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio
from google.protobuf.message import Message

from actors.hosting.groupwatch import reset_if_ahead
from actors.hosting.inbox import FRAME
from bus import Append, Bus, BusClosed, BusUnavailable
from contracts import Signer, kinds, streams
from contracts.config import KasminaConfig
from contracts.registry import REGISTRY
from leyline import pb

__all__ = ["HEARTBEAT_MAXLEN", "Housekeeping", "digest_appends", "every", "trim_inbox"]

HEARTBEAT_MAXLEN = 2_000
WATCH_S = 0.5  # how often a serving actor checks that its group is not past its inbox's end


async def every(
    period_s: float,
    work: Callable[[], Awaitable[None]],
    *,
    active: Callable[[], bool],
    running: Callable[[], bool],
    first_wait: bool = False,
) -> None:
    """Run ``work`` every ``period_s`` while ``running()``, skipping turns when not ``active()``;
    a turn that finds Redis away is skipped, a closed bus ends the loop."""
    if first_wait:
        await anyio.sleep(period_s)
    while running():
        if active():
            try:
                await work()
            except BusUnavailable:
                pass
            except BusClosed:
                return
        await anyio.sleep(period_s)


async def publish_heartbeat(bus: Bus, run: str, signer: Signer, beat: pb.Heartbeat) -> None:
    """One beat onto the run's capped heartbeat stream."""
    stream = streams.heartbeats(run)
    frame = signer.seal(kinds.HEARTBEAT, beat, stream=stream)
    fields = {FRAME: frame, "kind": kinds.HEARTBEAT.encode()}
    await bus.publish(stream, fields, maxlen=HEARTBEAT_MAXLEN)


async def trim_inbox(bus: Bus, inbox: str, retention_s: float, now_ms: int | None = None) -> int:
    """Trim acked inbox entries older than the retention (never a pending or unread one)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    cutoff = f"{max(0, now - int(retention_s * 1000))}-0"
    return await bus.trim(inbox, min_id=cutoff)


def digest_appends(
    events_stream: str, signer: Signer, digests: Mapping[tuple[str, str], bytes], cause: str
) -> list[Append]:
    """The state digests as they stand, one event each, after the event ``cause`` caused."""
    out = []
    for (actor, key), digest in digests.items():
        record = pb.StateDigest(actor=actor, key=key, digest=digest, after_event_id=cause)
        frame = signer.seal(kinds.STATE_DIGEST, record, stream=events_stream, causation_id=cause)
        out.append(Append(events_stream, {FRAME: frame, "kind": kinds.STATE_DIGEST.encode()}))
    return out


class Housekeeping:
    """Heartbeats and inbox retention of one actor, as two tasks that act only while its host
    owns the actor. ``counters`` gives (processed, rejected by reason) for the beats."""

    def __init__(
        self,
        bus: Bus,
        run: str,
        inbox: str,
        signer: Signer,
        config: KasminaConfig,
        *,
        name: str,
        process: str,
        heartbeat_s: float,
        counters: Callable[[], tuple[int, dict[str, int]]],
        timer: Callable[[int], Message | None] | None = None,
        timer_s: float = 0.25,
        decided: Callable[[], tuple[int, int] | None] = lambda: None,
    ) -> None:
        self.bus, self.run_id, self.inbox, self.signer = bus, run, inbox, signer
        self.config = config
        self.name, self.process, self.heartbeat_s = name, process, heartbeat_s
        self.counters = counters
        self.timer, self.timer_s = timer, timer_s
        self.decided = decided  # the highest inbox id decided since the rebuild (group watch)
        self.timed = 0  # timer messages sent
        self.started_ns = time.time_ns()
        self.trimmed = 0
        self.on_moved: Callable[[], None] = lambda: None  # the host wakes its blocked read

    async def beat(self) -> None:
        """One heartbeat with the actor's counters."""
        processed, rejected = self.counters()
        beat = pb.Heartbeat(
            actor=self.name,
            process=self.process,
            started_ns=self.started_ns,
            processed=processed,
            rejected=rejected,
            ts_ns=time.time_ns(),
        )
        await publish_heartbeat(self.bus, self.run_id, self.signer, beat)

    async def watch_group(self) -> str | None:
        """Move the actor's group back if it was found past the end of its inbox (then wake the
        host's blocked read: it would not see the entries held back until its time ran out)."""
        moved = await reset_if_ahead(
            self.bus, self.inbox, streams.group(self.name), self.decided(),
            self.config.security.clock_tolerance_s, (self.signer, self.run_id, self.name),
        )  # fmt: skip
        if moved is not None:
            self.on_moved()
        return moved

    async def _watch(self) -> None:
        await self.watch_group()

    async def trim_inbox(self, now_ms: int | None = None) -> int:
        """Trim acked inbox entries older than the retention (never a pending or unread one)."""
        return await trim_inbox(self.bus, self.inbox, self.config.bus.inbox_retention_s, now_ms)

    async def _trim(self) -> None:
        self.trimmed += await self.trim_inbox()

    async def tick(self, now_ns: int | None = None) -> bool:
        """Ask the core's timer once; send what it returns to the actor's own inbox."""
        if self.timer is None:
            return False
        message = self.timer(time.time_ns() if now_ns is None else now_ns)
        if message is None:
            return False
        kind = REGISTRY.kind_of(message)
        frame = self.signer.seal(kind, message, stream=self.inbox)
        await self.bus.publish(self.inbox, {FRAME: frame, "kind": kind.encode()})
        self.timed += 1
        return True

    async def _tick(self) -> None:
        await self.tick()

    async def run(self, active: Callable[[], bool], running: Callable[[], bool]) -> None:
        """Beat every ``heartbeat_s``, watch the inbox's group every :data:`WATCH_S`, trim every
        ``bus.trim_every_s`` and ask the timer every ``timer_s`` while ``running()``, skipping
        turns while not ``active()`` (a standby)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: every(self.heartbeat_s, self.beat, active=active, running=running)
            )
            tg.start_soon(lambda: every(WATCH_S, self._watch, active=active, running=running))
            tg.start_soon(lambda: every(self.config.bus.trim_every_s, self._trim, active=active,
                                        running=running, first_wait=True))  # fmt: skip
            if self.timer is not None:
                tg.start_soon(
                    lambda: every(self.timer_s, self._tick, active=active, running=running)
                )
