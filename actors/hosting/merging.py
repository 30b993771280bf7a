"""The lone events of one inbox batch merged into one (docs/design.md §4, "Step-report
bookkeeping"), and the merged events a rival's commit kept out of the log.

A merged event rides on the commit item of the last entry it covers. If another shell had
already committed that entry (its item comes back not fresh, nothing written) while an entry the
event also covers was committed here, the bookkeeping of that entry (a report's validation
accuracy, say) reached neither log: the merged event is then owed. After the rebuild that
follows, the next batch reissues it, numbered after the rebuilt state (unless that state holds a
newer step: then it is stale, as its reports would be), on its first item; if that item is not
committed either, it stays owed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from actors.core import Decision
from bus import Append, Handled

__all__ = ["OpenEvents"]

Sign = Callable[[Message, str], Append]  # an event and its cause -> its signed append


class OpenEvents:
    """The open (not yet signed) lone events of the batch being decided, by the item carrying
    each, and the merged events owed from an earlier batch."""

    def __init__(self, logic: Any) -> None:
        self.logic = logic
        self._merge = getattr(logic, "merge", None)  # takes a lone event into the open one
        self._reissue = getattr(logic, "reissue", None)  # an owed event after the state
        self.opens: dict[int, tuple[Message, str]] = {}  # carrying item -> event, cause
        self.open_at: int | None = None  # the one the next lone event may merge into
        self._covers: dict[int, list[int]] = {}  # carrying item -> the items it covers
        self._sealed: dict[int, tuple[Message, str]] = {}  # the same, once signed
        self.owed: list[tuple[Message, str]] = []  # merged events kept out of the log
        self._reissued: list[tuple[Message, str]] = []  # owed events riding on item 0

    def start(self, *, reissue: bool) -> list[tuple[Message, str]]:
        """A new batch: owed events reissued after the state when ``reissue`` (the batch has
        an item for them), applied, to ride on its first item; returns them with their causes."""
        self.opens, self.open_at, self._covers, self._sealed = {}, None, {}, {}
        self.owed[:0], self._reissued = self._reissued, []  # a batch cut short by a bus error
        if not reissue or self._reissue is None:
            return []
        for event, cause in self.owed:
            again = self._reissue(event)
            if again is not None:
                self.logic.apply(Decision(events=(again,)))
                self._reissued.append((again, cause))
        self.owed = []
        return self._reissued

    def take(self, decision: Decision, at: int, cause: str) -> bool:
        """Take a decision of one event and nothing else: applied, or its event merged into the
        open one when the logic merges the two, the merged event then riding on item ``at``.
        False for any other decision (one with events ends the open run)."""
        if not decision.lone:
            if decision.events:
                self.open_at = None
            return False
        merge, open_at = self._merge, self.open_at
        merged = merge(decision) if merge is not None and open_at is not None else None
        if merged is None or open_at is None:
            self.logic.apply(decision)
            event, covered = decision.events[0], [at]
        else:
            del self.opens[open_at]
            event, covered = merged, [*self._covers.pop(open_at), at]
        self.opens[at] = (event, cause)
        self._covers[at] = covered
        self.open_at = at
        return True

    def seal(self, handled: list[Handled], sign: Sign) -> None:
        """Each open event signed onto the item of the last entry it covers; owed events
        reissued this batch before everything on its first item."""
        for at, (event, cause) in self.opens.items():
            item = handled[at]
            handled[at] = _with(item, [*item.appends, sign(event, cause)])
        if self._reissued and handled:
            first = handled[0]
            handled[0] = _with(first, [*(sign(e, c) for e, c in self._reissued), *first.appends])
        self._sealed, self.opens, self.open_at = self.opens, {}, None

    def committed(self, results: Sequence[bool]) -> bool:
        """After the commit: owe each merged event whose item was not committed while an entry
        it covers was (and the reissued ones, if their item was not); True when an event
        applied to the state was not written (the state must be rebuilt)."""
        for at, covered in self._covers.items():
            if not results[at] and any(results[i] for i in covered if i != at):
                self.owed.append(self._sealed[at])
        lost = bool(self._reissued) and bool(results) and not results[0]
        if lost:
            self.owed[:0] = self._reissued
        self._covers, self._sealed, self._reissued = {}, {}, []
        return lost


def _with(item: Handled, appends: list[Append]) -> Handled:
    return Handled(item.entry, item.group, appends, item.dedupe_key)
