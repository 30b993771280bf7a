"""What a host drives: a core with its state (``actors/logic.py`` adapts each core to it)."""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message

from actors.core import Decision
from actors.hosting.inbox import Meta

__all__ = ["ActorLogic"]


class ActorLogic(Protocol):
    """A pure core with its state, as the shell drives it."""

    name: str  # e.g. "seed:layer1.s0" or "gate"
    accepts: frozenset[str]  # envelope kinds it handles

    def handle(self, kind: str, message: Message, meta: Meta) -> Decision:
        """Decide (no state change)."""
        ...

    def apply(self, decision: Decision) -> None:
        """Fold the decision's events into the state."""
        ...

    def reset(self) -> None:
        """Back to the initial state (before a rebuild)."""
        ...

    def fold(self, kind: str, message: Message) -> bool:
        """Fold one recorded event of this actor (rebuild); events of others are ignored.
        True if the event was this actor's (the state moved to its fold)."""
        ...

    def snapshot(self) -> object:
        """The state as it stands (to :meth:`restore` it; not copied, never mutated later)."""
        ...

    def restore(self, snapshot: object) -> None:
        """Back to a state :meth:`snapshot` returned."""
        ...

    def digests(self) -> dict[tuple[str, str], bytes]:
        """State digest per (actor, key) (key: the slot, or "" for singletons)."""
        ...
