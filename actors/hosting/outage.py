"""What a process's hosts say while Redis does not answer them: one warning when it stops
answering, one a minute while that lasts, and a line when it answers again; the hosts of one
bus share them (one line for the process, not one per actor)."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

from actors.hosting.restart import one_line
from bus import Bus

__all__ = ["Outage", "outage_of"]

log = logging.getLogger("kasmina.actors")
REPEAT_S = 60.0  # while Redis stays away, a warning this often


class Outage:
    """An outage of one bus as its hosts see it."""

    def __init__(
        self, *, repeat_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.repeat_s = repeat_s
        self._clock = clock
        self.since: float | None = None  # when a host first found Redis away (None: it answers)
        self._said = 0.0

    def failed(self, who: str, exc: BaseException) -> None:
        """``who`` found Redis away: warn if this is news, or a warning is due again."""
        now = self._clock()
        if self.since is None:
            self.since = self._said = now
            log.warning("%s: Redis does not answer (%s); waiting for it", who, one_line(exc))
        elif now - self._said >= self.repeat_s:
            self._said = now
            log.warning("%s: Redis still does not answer after %.0f s (%s); waiting for it",
                        who, now - self.since, one_line(exc))  # fmt: skip

    def answered(self, who: str) -> None:
        """``who`` reached Redis: the end of an outage, if there was one, is said once."""
        if self.since is not None:
            log.info("%s: Redis answers again after %.1f s", who, self._clock() - self.since)
            self.since = None


_OUTAGES: weakref.WeakKeyDictionary[Bus, Outage] = weakref.WeakKeyDictionary()


def outage_of(bus: Bus) -> Outage:
    """The outage record the hosts of ``bus`` share."""
    outage = _OUTAGES.get(bus)
    if outage is None:
        outage = _OUTAGES[bus] = Outage()
    return outage
