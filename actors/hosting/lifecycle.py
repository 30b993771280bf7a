"""The lifecycle of an actor host, one state at a time.

======== ================================================================================
state    meaning
======== ================================================================================
starting constructed; ``run`` has not yet tried to take the ownership lease
standby  another process holds the lease (or Redis is away): this host waits and decides nothing
rebuild  holds the lease; its state is being (re)folded from the event stream, or a rebuild was
         cut short and is redone before the next batch is decided
serving  holds the lease, state rebuilt: reads, decides and commits
stopping ``stop`` was called: the batch in progress finishes, the lease is handed back
stopped  ``run`` has returned
======== ================================================================================

A host that loses its lease goes back to ``standby`` (and rebuilds when it takes it again).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Lifecycle"]


class Lifecycle(StrEnum):
    """Where an actor host stands."""

    STARTING = "starting"
    STANDBY = "standby"
    REBUILDING = "rebuilding"
    SERVING = "serving"
    STOPPING = "stopping"
    STOPPED = "stopped"

    @property
    def owns(self) -> bool:
        """Holds the ownership lease (rebuilding or serving)."""
        return self in (Lifecycle.REBUILDING, Lifecycle.SERVING)

    @property
    def ending(self) -> bool:
        """Stopping or stopped."""
        return self in (Lifecycle.STOPPING, Lifecycle.STOPPED)
