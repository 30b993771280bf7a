"""How the in-process bus judges the items of one commit, as the Redis COMMIT script does
(bus/_scripts.py): a plain ack says whether its entry was pending when its turn came; an item
with a dedupe marker or appends is fresh when its entry was pending as the commit found the group,
its marker unset, and no earlier item of the commit claimed the same entry or marker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .api import Handled, processed_key

if TYPE_CHECKING:
    from .memory import MemoryStore

__all__ = ["commit_items"]


def commit_items(store: MemoryStore, handled: Sequence[Handled], ttl_ms: int) -> list[bool]:
    """Ack every item's entry, write the effects of the fresh ones; per item, whether it was
    fresh (a plain ack: whether it acked its entry)."""
    found = [  # as the commit found the group (a plain ack needs no look-up)
        (h.appends or h.dedupe_key is not None)
        and store.pending(h.entry.stream, h.group, h.entry.id)
        for h in handled
    ]
    seen: set[object] = set()
    results: list[bool] = []
    for h, pending in zip(handled, found, strict=True):
        acked = store.ack(h.entry.stream, h.group, h.entry.id)
        if not h.appends and h.dedupe_key is None:
            results.append(acked)
            continue
        key = _fresh_marker(store, h, pending, seen)
        if key is not None:
            if key:
                store.set(key, b"1", ttl_ms)
            for a in h.appends:
                store.add(a.stream, a.fields, a.maxlen)
        results.append(key is not None)
    return results


def _fresh_marker(store: MemoryStore, h: Handled, pending: bool, seen: set[object]) -> str | None:
    """For an item with effects: None when it is not fresh, else its marker key ("" for none);
    its entry and marker are claimed in ``seen`` either way."""
    entry = (h.entry.stream, h.group, h.entry.id)
    key = "" if h.dedupe_key is None else processed_key(h.entry.stream, h.group, h.dedupe_key)
    fresh = pending and entry not in seen and not (key and key in seen)
    fresh = fresh and not (key and store.get(key) is not None)
    seen.add(entry)
    if key:
        seen.add(key)
    return key if fresh else None
