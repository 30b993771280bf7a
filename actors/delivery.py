"""Publishing without duplicates across a lost reply.

A write that raised :class:`~bus.BusUnavailable` may have happened. Before resending, a publisher
looks for the same signed frame in the target stream, from a little before its first try on: the
window is the clock tolerance, since a clock further off than that makes every message stale
anyway. Only failed tries pay for the look.
"""

from __future__ import annotations

import time

from actors.hosting import FRAME
from bus import Bus, aiter_entries

__all__ = ["since", "written"]


def since(window_s: float) -> str:
    """The stream id ``window_s`` before now (entry ids are milliseconds)."""
    return f"{max(0, time.time_ns() // 1_000_000 - int(window_s * 1000))}-0"


async def written(bus: Bus, stream: str, frame: bytes, start: str) -> bool:
    """Whether ``frame`` is in ``stream`` at or after id ``start``."""
    async for entry in aiter_entries(bus, stream, start=start):
        if entry.fields.get(FRAME) == frame:
            return True
    return False
