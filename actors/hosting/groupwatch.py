"""A consumer group moved past the end of its stream.

A group's last-delivered id can never legitimately pass the stream's last id: Redis delivers only
entries that exist. A Redis writer who runs ``XGROUP SETID`` to a future id makes the server hold
back every later entry (their ids are below the group's), silently: the actor sees no input, its
lag reads 0. The serving actor checks its group twice a second (an ExecutionActor with its
heartbeat); when it finds it ahead of the stream it moves it back to the last entry it decided
since its rebuild (the entries after it are undecided), or, when it has decided none, to the
clock tolerance ago (anything older is stale anyway), and wakes its own consumer, whose read
blocked since the move would not see the held-back entries; entries delivered again are
deduplicated as after any rewind. It says so in a signed
note on the run's ``quarantine`` stream (``group_moved``) and in its log.
"""

from __future__ import annotations

import logging
import time

from actors.hosting.quarantine import note_group_moved
from bus import Bus, parse_id
from contracts import Signer

log = logging.getLogger("kasmina.actors")

__all__ = ["reset_if_ahead"]


async def reset_if_ahead(
    bus: Bus,
    inbox: str,
    group: str,
    decided: tuple[int, int] | None,
    tolerance_s: float,
    note: tuple[Signer, str, str],
) -> str | None:
    """Move ``group`` back when it is past the end of ``inbox``; the id it was moved to, if so.

    ``decided``: the highest inbox id the actor decided since its rebuild; ``note``: the signer,
    run and actor name for the ``group_moved`` note."""
    info = await bus.info(inbox, oldest=False, group=group)
    found = next((g for g in info.groups if g.name == group), None)
    if (
        found is None
        or not info.last_id
        or parse_id(found.last_delivered) <= parse_id(info.last_id)
    ):
        return None
    # the stream and its groups are two reads: entries added and delivered in between make a
    # healthy group look ahead of the first. Only a group ahead of the stream read after it is.
    info = await bus.info(inbox, oldest=False, group=group)
    if parse_id(found.last_delivered) <= parse_id(info.last_id):
        return None
    if decided is not None:
        target = f"{decided[0]}-{decided[1]}"
    else:
        target = f"{max(0, time.time_ns() // 1_000_000 - int(tolerance_s * 1000))}-0"
    if parse_id(target) > parse_id(info.last_id):
        target = info.last_id
    await bus.set_group_id(inbox, group, target)
    signer, run, actor = note
    detail = (f"group {group} was at {found.last_delivered}, past the stream's last id "
              f"{info.last_id}: moved back to {target}")  # fmt: skip
    log.warning("%s: %s", actor, detail)
    await note_group_moved(bus, signer, run, actor, inbox, detail)
    return target
