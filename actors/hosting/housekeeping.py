"""Housekeeping of a serving actor: heartbeats, inbox retention, state digests.

Only the process that holds an actor's lease does any of it: a standby is not the actor (the
holder's beats say who serves) and does not repeat the holder's trims.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from actors.hosting.inbox import FRAME
from bus import Append, Bus, BusClosed, BusUnavailable
from contracts import Signer, kinds, streams
from leyline import pb

__all__ = ["HEARTBEAT_MAXLEN", "digest_appends", "every", "trim_inbox"]

HEARTBEAT_MAXLEN = 2_000


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
