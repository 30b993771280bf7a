"""Publishing without duplicates across a lost reply.

A write that raised :class:`~bus.BusUnavailable` may have happened. Before resending, a publisher
looks for the same signed frame in the target stream, from a little before its first try on: the
window is the clock tolerance, since a clock further off than that makes every message stale
anyway. Only failed tries pay for the look.

A command shed by admission (docs/wire.md §5.2) is acked undecided and counted in one signed
``overloaded`` record naming the range of entries it covers; :func:`shed_record` finds the record
that covers a given entry, so its sender learns it was shed even when the actor told only the
first claimed ids of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from actors.hosting import FRAME
from bus import Bus, aiter_entries, parse_id
from contracts import REGISTRY, ContractError, Reason, Verifier, streams
from leyline import pb

__all__ = ["EXHAUSTED_ID", "exhausted", "shed_record", "since", "written", "written_at"]

#: the largest entry id: a stream whose last id it is takes no more entries (a Redis writer's XADD)
EXHAUSTED_ID = "18446744073709551615-18446744073709551615"

_OVERLOADED = Reason.OVERLOADED.value.encode()
log = logging.getLogger("kasmina.actors")


def since(window_s: float) -> str:
    """The stream id ``window_s`` before now (entry ids are milliseconds)."""
    return f"{max(0, time.time_ns() // 1_000_000 - int(window_s * 1000))}-0"


async def written_at(bus: Bus, stream: str, frame: bytes, start: str) -> str | None:
    """The id of ``frame``'s entry in ``stream`` at or after id ``start`` (None: not there).

    With ``wait=N`` an entry found counts only once N replicas hold it (``Bus.find_entry``):
    a primary about to be demoted may hold an append whose reply was lost, and lose it."""
    return await bus.find_entry(stream, FRAME, frame, start)


async def exhausted(bus: Bus, names: Iterable[str]) -> set[str]:
    """The streams among ``names`` that can take no more entries (their last id is the largest):
    an append to them is refused for good, so a batch holding one can never be sent whole."""
    return {name for name in set(names) if (await bus.info(name)).last_id == EXHAUSTED_ID}


async def written(bus: Bus, stream: str, frame: bytes, start: str) -> bool:
    """Whether ``frame`` is in ``stream`` at or after id ``start``."""
    return await written_at(bus, stream, frame, start) is not None


async def shed_record(
    bus: Bus, run: str, verifier: Verifier, entry: tuple[str, str], cursor: str | None
) -> tuple[tuple[str, pb.Rejection] | None, str]:
    """The verified ``overloaded`` record of ``run`` whose range covers ``entry`` (its inbox and
    id), read from the rejected stream after ``cursor`` (None: from the entry's millisecond on,
    since a record of it is written later): (its entry id and message, or None; the new cursor).
    Only records whose plain ``reason`` field says ``overloaded`` are verified, and only one
    signed by the actor that reads ``inbox`` (sender and ``actor`` both name it) is believed:
    any actor's key may sign a rejection, but only the inbox's own actor sheds it."""
    inbox, entry_id = entry
    mine = parse_id(entry_id)
    start = f"({cursor}" if cursor else f"{mine[0]}-0"
    async for rec in aiter_entries(bus, streams.rejected(run), start=start):
        cursor = rec.id
        if rec.fields.get("reason") != _OVERLOADED:
            continue
        try:
            env = verifier.open(rec.fields.get(FRAME, b""), stream=rec.stream)
            rej = REGISTRY.parse(env.kind, env.body)
        except ContractError as exc:  # not the actor's record: no outcome, but not unseen
            log.warning("unverified overloaded record %s: %s", rec.id, exc)
            continue
        if not isinstance(rej, pb.Rejection) or rej.stream != inbox or not rej.count:
            continue
        if not parse_id(rej.entry_id) <= mine <= parse_id(rej.last_entry_id or rej.entry_id):
            continue
        forged = _not_the_shedder(env.sender, rej, inbox)
        if forged:  # signed by a key that may sign records, but not by the inbox's actor
            log.warning("forged overloaded record %s (%s): %s", rec.id, Reason.INVALID, forged)
            continue
        return (rec.id, rej), cursor
    return None, cursor or start.lstrip("(")


def _not_the_shedder(sender: str, record: pb.Rejection, inbox: str) -> str:
    """Why a shed run's record of ``inbox`` signed by ``sender`` is not its actor's ("": it is)."""
    actor = streams.inbox_actor(inbox)
    if actor is None:
        return f"{inbox} is not an inbox"
    if sender != actor or record.actor != actor:
        return (
            f"signed by {sender!r} for actor {record.actor!r}, not by the inbox's actor {actor!r}"
        )
    return ""
